"""``align rm ...``: reward models (training, evaluation, serving)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from align.cli.launch import ACCELERATE_CONFIG, NUM_PROCESSES, relaunch_if_asked

rm_app = typer.Typer(help="Reward models: train (UFRM), evaluate, serve.", no_args_is_help=True)


@rm_app.command(
    "train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def rm_train(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, help="YAML file of UFRMConfig fields."),
    show_config: bool = typer.Option(False, help="Print the resolved config and exit."),
    num_processes: int | None = NUM_PROCESSES,
    accelerate_config: Path | None = ACCELERATE_CONFIG,
) -> None:
    """Two-stage UFRM training (BT + inverse-RL + SimCSE). Any UFRMConfig field can be
    overridden as --field value (e.g. --cl_weight 0 --stage2_data fin.jsonl)."""
    from align.cli.common import console, progress_bar
    from rm.ufrm import UFRMConfig

    cfg = UFRMConfig.from_sources(config, ctx.args)
    args = ["rm", "train", *(["--config", str(config)] if config else []), *ctx.args]
    relaunch_if_asked(args, num_processes, accelerate_config)
    if show_config:
        console.print(cfg.to_yaml(), markup=False, highlight=False)
        return
    from transformers.utils import logging as hf_logging

    from align.ufrm.run import StageProgress, run

    hf_logging.disable_progress_bar()  # per-file loading bars; the stage bars follow
    main = int(os.environ.get("RANK", "0")) == 0
    with progress_bar(enabled=main) as bar:
        summary = run(cfg, progress=StageProgress(bar))
    if main:  # under accelerate launch the main process reports
        _report(console, summary)


def _report(console, summary: dict) -> None:
    for stage in summary["stages"]:
        data = stage["data"]
        console.print(
            f"stage {stage['stage']}: {data['kept']} pairs ({data['identical']} identical dropped, "
            f"{data['truncated']} truncated), train loss {stage['train_loss']:.4f}",
            markup=False,
        )
        for path, result in (stage.get("eval") or {}).items():
            console.print(f"  {path}: alignment rate {100 * result['accuracy']:.1f}%", markup=False)
    console.print(f"final reward model: {summary['final']}", markup=False, soft_wrap=True)


@rm_app.command("eval")
def rm_eval(
    model: Path = typer.Option(..., help="Reward model directory (HF format)."),
    data: Path = typer.Option(..., help="Preference records (JSONL/Parquet/CSV/dir)."),
    chat_format: str = typer.Option("hf", help="Chat format the conversations are rendered with."),
    max_length: int = typer.Option(1024, help="Longer conversations are left-truncated (counted)."),
    batch_size: int = typer.Option(16, help="Pairs per forward."),
    bins: int = typer.Option(5, help="Equal-count score bins for accuracy by score."),
    out: Path | None = typer.Option(None, help="Write the JSON result here (and .md beside it)."),
) -> None:
    """Alignment rate per category and overall, margin, reward scale, accuracy by score bin."""
    from rich.console import Console

    from rm.evaluate import evaluate_reward_model, to_markdown, write_report

    if not model.is_dir():
        raise FileNotFoundError(f"{model}: no such reward model directory")
    result = evaluate_reward_model(model, data, chat_format, max_length, batch_size, bins)
    Console().print(to_markdown(result), markup=False, highlight=False, soft_wrap=True)
    if out is not None:
        write_report(result, out, out.with_suffix(".md"))
