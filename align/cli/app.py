"""The ``align`` command line.

User errors (bad input files, bad options) print one line and exit with status 2; set
``ALIGN_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.table import Table

import align.cli.serve  # noqa: F401  (registers align rm serve)
from align import __version__
from align.cli.bucket import data_bucket
from align.cli.common import USER_ERRORS, console, err_console, progress_bar
from align.cli.eval import eval_app
from align.cli.filter import filter_command
from align.cli.launch import ACCELERATE_CONFIG, NUM_PROCESSES, relaunch_if_asked
from align.cli.pei import pei
from align.cli.rm import rm_app

app = typer.Typer(
    help="align: RLHF alignment toolkit (PPO with four models, UFRM reward models, PEI loops).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tiny_app = typer.Typer(help="The embedded tiny financial world.", no_args_is_help=True)
data_app = typer.Typer(help="Check and inspect data files.", no_args_is_help=True)
app.add_typer(tiny_app, name="tiny")
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
data_app.command("bucket")(data_bucket)
app.add_typer(rm_app, name="rm")



def _version(value: bool) -> None:
    if value:
        console.print(f"align {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """align: RLHF alignment toolkit."""


@tiny_app.command("build")
def tiny_build(
    out: Path | None = typer.Option(
        None, help="Where to build; default $ALIGN_CACHE/tiny-world (~/.cache/align/tiny-world)."
    ),
    force: bool = typer.Option(False, help="Rebuild even when a matching build is cached."),
    seed: int = typer.Option(0, help="Seed of the data generator and of training."),
) -> None:
    """Build the tiny world (data, tokenizer, SFT policy, reward backbone), or reuse the cache."""
    from align.tiny.build import TinyWorldConfig, build_tiny_world

    stages = iter(range(1, 100))
    world, built = build_tiny_world(
        out,
        TinyWorldConfig(seed=seed),
        force=force,
        on_stage=lambda s: console.print(f"[bold cyan][{next(stages)}/6][/] {s}"),
    )
    manifest = world.manifest
    verb = "built" if built else "cached"
    console.print(
        f"tiny world {verb} at [bold]{world.root}[/] "
        f"(the build took {manifest['build_seconds']} s)",
        soft_wrap=True,
    )
    console.print(_format_table(manifest))


def _format_table(manifest: dict) -> Table:
    before, after = manifest["held_out_before_sft"], manifest["held_out_after_sft"]
    table = Table(title=f"{after['n']} held-out prompts, greedy: before → after SFT")
    for column in ("sub-domain", "on format", "rule reward"):
        table.add_column(column)
    for category, stats in after["per_category"].items():
        was = before["per_category"][category]
        table.add_row(
            category,
            f"{was['on_format']:.0%} → {stats['on_format']:.0%}",
            f"{was['reward']:+.3f} → {stats['reward']:+.3f}",
        )
    table.add_row(
        "all",
        f"{before['on_format']:.0%} → {after['on_format']:.0%}",
        f"{before['reward']:+.3f} → {after['reward']:+.3f}",
        style="bold",
    )
    return table


@app.command("ppo", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ppo(
    ctx: typer.Context,
    config: str | None = typer.Option(
        None, help="YAML config file, or 'tiny' for the shipped tiny-world config."
    ),
    show_config: bool = typer.Option(False, help="Print the resolved config and exit."),
    num_processes: int | None = NUM_PROCESSES,
    accelerate_config: Path | None = ACCELERATE_CONFIG,
) -> None:
    """PPO with actor, reference, critic and reward functions. Any PPOConfig field can be
    overridden as --field value (e.g. --beta 0.1 --total_steps 20)."""
    from align.ppo.config import PPOConfig

    cfg = PPOConfig.from_sources(config, ctx.args)
    args = ["ppo", *(["--config", config] if config else []), *ctx.args]
    relaunch_if_asked(args, num_processes, accelerate_config)
    if show_config:
        console.print(cfg.to_yaml(), markup=False, highlight=False)
        return
    from transformers.utils import logging as hf_logging

    from align.ppo.run import build_trainer, close_engine

    hf_logging.disable_progress_bar()  # per-file loading bars; the PPO bar follows
    trainer = build_trainer(cfg)
    counts = trainer.param_counts
    for name in ("actor", "critic"):
        trainable, total = counts[f"params/{name}_trainable"], counts[f"params/{name}_total"]
        console.print(f"{name}: {trainable:,} of {total:,} parameters trainable")
    if trainer.truncated_prompts:
        console.print(
            f"{trainer.truncated_prompts} prompts longer than max_prompt_length "
            f"({cfg.max_prompt_length} tokens) were left-truncated"
        )
    with progress_bar(enabled=trainer.accelerator.is_main_process) as bar:
        task = bar.add_task("PPO", total=cfg.total_steps, completed=trainer.step, info="")

        def report(step: int, m: dict) -> None:
            info = f"score {m['objective/scores']:+.3f}  kl {m['objective/kl']:.3f}"
            bar.update(task, completed=step, info=info)

        try:
            metrics = trainer.train(report)
        finally:
            close_engine(trainer)
    if "eval/score" in metrics:
        console.print(f"held-out score after {trainer.step} steps: {metrics['eval/score']:+.4f}")
    console.print(f"run directory: {trainer.out}", soft_wrap=True)


app.command("filter")(filter_command)
app.command("pei", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    pei
)


@data_app.command("validate")
def data_validate(
    path: Path = typer.Argument(..., help="JSONL, Parquet, CSV file or saved datasets directory."),
    kind: str = typer.Option(..., help="Record kind: prompts, prefs, sft or mcq."),
    max_errors: int = typer.Option(20, help="How many errors to list at most."),
) -> None:
    """Check a data file against a record contract; exit 2 when any row is invalid."""
    from align.core.data import validate

    report = validate(path, kind, max_errors=max_errors)
    if not report.ok:
        for error in report.errors:
            err_console.print(str(error), markup=False, highlight=False)
        err_console.print(
            f"{report.n_invalid} of {report.n_rows} rows invalid in {path}",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(2)
    console.print(f"{path}: {report.n_rows} valid {kind} records", markup=False, highlight=False)
    table = Table()
    table.add_column("category")
    table.add_column("rows", justify="right")
    for category, count in sorted(report.counts.items()):
        table.add_row(category, str(count))
    console.print(table)


@data_app.command("financeiq-prefs")
def data_financeiq_prefs(
    directory: Path = typer.Argument(..., help="Folder of FinanceIQ-format MCQ CSV files."),
    out: Path = typer.Option(..., help="Preference records to write (JSONL)."),
) -> None:
    """FinanceIQ MCQs → preference pairs: chosen names the correct option, rejected a wrong one
    (one pair per wrong option), category = the exam (file stem)."""
    from align.core.data import write_jsonl
    from align.core.pref_data import financeiq_prefs

    conversion = financeiq_prefs(directory)
    n = write_jsonl(conversion.records, out)
    console.print(f"{out}: {n} preference pairs", markup=False, highlight=False)
    for reason, count in conversion.skipped.items():
        console.print(f"left out {count}: {reason}", markup=False, highlight=False)


def main() -> None:
    """Console entry point: one line and exit 2 for user errors (click handles usage errors)."""
    try:
        app()
    except USER_ERRORS as error:
        if os.environ.get("ALIGN_DEBUG"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        err_console.print(f"error: {message}", markup=False, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
