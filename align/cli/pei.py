"""``align pei``: the PEI-RLHF loop from the command line (a rich progress bar per PPO round)."""

from __future__ import annotations

from pathlib import Path

from align.cli.common import console, progress_bar
from align.cli.config_command import LAUNCH_EXTRAS, Invocation, config_command
from align.cli.launch import relaunch


def _config_class() -> type:
    from align.pei.run import PEIConfig  # lazy: loads torch; keeps 'align --help' fast

    return PEIConfig


def run_pei_command(cfg, invocation: Invocation) -> None:
    """Re-launch if asked, run (or resume) the loop, print where it stopped."""
    relaunch(invocation)
    decisions = _run_with_progress(cfg)
    last = decisions[-1]
    console.print(f"stopped after round {last.round}: {last.stop_reason}", markup=False)
    console.print(f"report: {Path(cfg.output_dir) / 'report.md'}", soft_wrap=True, markup=False)


pei = config_command(
    "pei",
    _config_class,
    run_pei_command,
    help="PEI-RLHF: PPO pre-training, then rounds of evaluate → attribute → re-mix → improve. "
    "Every PEIConfig field is an option (the PPO config of the rounds under --ppo.*, e.g. "
    "--ppo.total_steps 20 --round_steps 20 --beta0 0.2). With no model path and no --config "
    "it runs the tiny world from the shipped tiny config; once a model path is given, every "
    "input is required.",
    extras=LAUNCH_EXTRAS,
)


def _run_with_progress(cfg):
    # lazy: transformers and the PEI loop load only when it runs, keeping 'align --help' fast
    from transformers.utils import logging as hf_logging

    from align.pei.run import Progress, _is_main_process, run_pei

    hf_logging.disable_progress_bar()
    with progress_bar(enabled=_is_main_process()) as bar:
        tasks: dict[int, int] = {}

        def ppo_step(k: int, step: int, total: int, m: dict) -> None:
            if k not in tasks:
                label = "baseline PPO" if k < 0 else f"round {k} PPO"  # k = -1: the baseline
                tasks[k] = bar.add_task(label, total=total, info="")
            info = f"score {m['objective/scores']:+.3f}  kl {m['objective/kl']:.3f}"
            bar.update(tasks[k], completed=step, info=info)

        def message(text: str) -> None:
            if _is_main_process():
                console.print(text, markup=False, highlight=False)

        return run_pei(cfg, Progress(message, ppo_step))
