"""``align rm ...``: reward models (training, evaluation, serving)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.console import Console

from align.cli.common import console, progress_bar
from align.cli.config_command import LAUNCH_EXTRAS, Invocation, config_command
from align.cli.launch import relaunch
from align.core.config import check_ranges, help_field

rm_app = typer.Typer(help="Reward models: train (UFRM), evaluate, serve.", no_args_is_help=True)


def _ufrm_config() -> type:
    from rm.ufrm import UFRMConfig  # lazy: loads trl/peft; keeps 'align --help' fast

    return UFRMConfig


def run_rm_train(cfg, invocation: Invocation) -> None:
    """Check the model's weights, re-launch if asked, train both stages with progress bars."""
    if cfg.model is not None:  # before any process starts: safetensors weights only
        from rm.model import require_safetensors  # lazy: loads torch; off 'align --help'

        require_safetensors(cfg.model)
    relaunch(invocation)
    # lazy: transformers, trl and peft load only to train (keeps 'align --help' fast)
    from transformers.utils import logging as hf_logging

    from align.ufrm.run import StageProgress, run

    hf_logging.disable_progress_bar()  # per-file loading bars; the stage bars follow
    main = int(os.environ.get("RANK", "0")) == 0
    with progress_bar(enabled=main) as bar:
        summary = run(cfg, progress=StageProgress(bar))
    if main:  # under accelerate launch the main process reports
        _report(console, summary)


rm_train_command = config_command(
    "train",
    _ufrm_config,
    run_rm_train,
    help="Two-stage UFRM training (BT + inverse-RL + SimCSE) on TRL's RewardTrainer. Every "
    "UFRMConfig field is an option, TRL's included (e.g. --cl_weight 0 --stage2_data fin.jsonl).",
    path=["rm", "train"],
    extras=LAUNCH_EXTRAS,
)


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


@dataclass
class RMEvalConfig:
    """``align rm eval``: a reward model on labelled preference pairs."""

    model: str = field(metadata={"help": "Reward model directory (HF format)."})
    data: str = field(metadata={"help": "Preference records (JSONL/Parquet/CSV/dir)."})
    chat_format: str = help_field("Chat format the conversations are rendered with.", "hf")
    max_length: int = help_field(
        "Longer conversations are left-truncated (counted).", 1024, ge=1
    )
    batch_size: int = help_field("Pairs per forward.", 16, ge=1)
    bins: int = help_field("Equal-count score bins for accuracy by score.", 5, ge=1)
    out: str | None = help_field("Write the JSON result here (and .md beside it).", None)

    def __post_init__(self) -> None:
        check_ranges(self)


def run_rm_eval(cfg: RMEvalConfig, invocation: Invocation) -> None:
    """Alignment rate per category and overall, margin, reward scale, accuracy by score bin."""
    from rm.evaluate import evaluate_reward_model, to_markdown, write_report  # lazy: trl/peft

    model = Path(cfg.model)
    if not model.is_dir():
        raise FileNotFoundError(f"model: {model}: no such reward model directory")
    result = evaluate_reward_model(
        model, cfg.data, cfg.chat_format, cfg.max_length, cfg.batch_size, cfg.bins
    )
    Console().print(to_markdown(result), markup=False, highlight=False, soft_wrap=True)
    if cfg.out is not None:
        out = Path(cfg.out)
        write_report(result, out, out.with_suffix(".md"))


rm_eval_command = config_command(
    "eval",
    lambda: RMEvalConfig,
    run_rm_eval,
    help="Alignment rate per category and overall, margin, reward scale, accuracy by score bin.",
    path=["rm", "eval"],
)
