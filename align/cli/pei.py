"""``align pei``: the PEI-RLHF loop from the command line (a rich progress bar per PPO round)."""

from __future__ import annotations

from pathlib import Path

import typer

from align.cli.launch import ACCELERATE_CONFIG, NUM_PROCESSES, relaunch_if_asked


def pei(
    ctx: typer.Context,
    config: str | None = typer.Option(
        None, help="YAML config of PEIConfig fields, or 'tiny' (the default with no paths)."
    ),
    rounds: int | None = typer.Option(None, help="Improvement rounds after PPO pre-training."),
    output_dir: str | None = typer.Option(None, help="Run directory (resumed if it has rounds)."),
    show_config: bool = typer.Option(False, help="Print the resolved config and exit."),
    num_processes: int | None = NUM_PROCESSES,
    accelerate_config: Path | None = ACCELERATE_CONFIG,
) -> None:
    """PEI-RLHF: PPO pre-training, then rounds of evaluate → attribute → re-mix → improve.
    Any PEIConfig field is a --field value override (e.g. --round_steps 20 --beta0 0.2)."""
    from align.cli.common import console
    from align.pei.run import PEIConfig

    overrides = list(ctx.args)
    overrides += ["--rounds", str(rounds)] if rounds is not None else []
    overrides += ["--output_dir", output_dir] if output_dir is not None else []
    cfg = PEIConfig.from_sources(config or "tiny", overrides)
    args = ["pei", "--config", config or "tiny", *overrides]
    relaunch_if_asked(args, num_processes, accelerate_config)
    if show_config:
        console.print(cfg.to_yaml(), markup=False, highlight=False)
        return
    decisions = _run_with_progress(cfg)
    last = decisions[-1]
    console.print(f"stopped after round {last.round}: {last.stop_reason}", markup=False)
    console.print(f"report: {Path(cfg.output_dir) / 'report.md'}", soft_wrap=True, markup=False)


def _run_with_progress(cfg):
    from transformers.utils import logging as hf_logging

    from align.cli.common import console, progress_bar
    from align.pei.run import Progress, _is_main_process, run_pei

    hf_logging.disable_progress_bar()
    with progress_bar(enabled=_is_main_process()) as bar:
        tasks: dict[int, int] = {}

        def ppo_step(k: int, step: int, total: int, m: dict) -> None:
            if k not in tasks:
                tasks[k] = bar.add_task(f"round {k} PPO", total=total, info="")
            info = f"score {m['objective/scores']:+.3f}  kl {m['objective/kl']:.3f}"
            bar.update(tasks[k], completed=step, info=info)

        def message(text: str) -> None:
            if _is_main_process():
                console.print(text, markup=False, highlight=False)

        return run_pei(cfg, Progress(message, ppo_step))
