"""The ``align`` command line.

Every command that runs from a config (``ppo``, ``pei``, ``filter``, ``sft``, ``pretrain``,
``chat``, ``rm train|eval|serve``, ``eval gsb|mcq``, ``data bucket|synth``, ``tiny build``) is
generated from its config dataclass (:mod:`align.cli.config_command`): ``--config FILE.yaml``, one
option per field (``--rollout.vllm.dtype bfloat16``), ``--show_config``; ``--help`` lists every
field.

User errors (bad input files, bad options, a bad config) print one line and exit with status 2;
set ``ALIGN_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import typer
from rich.table import Table

from align import __version__
from align.cli.bucket import data_bucket
from align.cli.chat import chat_command
from align.cli.common import USER_ERRORS, WRITE_ERRNOS, console, err_console, progress_bar
from align.cli.config_command import LAUNCH_EXTRAS, Extra, Invocation, config_command
from align.cli.eval import eval_app, gsb_command, mcq_command
from align.cli.export import export_command
from align.cli.filter import filter_command
from align.cli.launch import relaunch
from align.cli.pei import pei
from align.cli.plan import plan_command
from align.cli.recipes import pretrain_command, sft_command
from align.cli.rm import rm_app, rm_eval_command, rm_train_command
from align.cli.serve import serve_command
from align.cli.synth import synth_command
from align.cli.tiny import tiny_data, tiny_model
from align.core.config import ConfigWarning
from align.core.quiet import VERBOSE_HELP, apply_quiet, verbose_from_env, verbose_requested

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
app.add_typer(rm_app, name="rm")
app.command("export")(export_command)
tiny_app.command("model")(tiny_model)
tiny_app.command("data")(tiny_data)


def _version(value: bool) -> None:
    if value:
        console.print(f"align {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """align: RLHF alignment toolkit."""
    if verbose:  # main() saw it already; this covers the app invoked without main()
        apply_quiet(verbose=True)


def _tiny_world_config() -> type:
    from align.tiny.build import TinyWorldConfig  # lazy: loads datasets; keeps 'align --help' fast

    return TinyWorldConfig


def run_tiny_build(cfg, invocation: Invocation) -> None:
    """Build the tiny world (or reuse the cache) and show its before/after-SFT table."""
    from align.tiny.build import build_tiny_world  # lazy: as in _tiny_world_config

    stages = iter(range(1, 100))
    out = invocation.extras["out"]
    world, built = build_tiny_world(
        Path(out) if out else None,
        cfg,
        force=invocation.extras["force"],
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


tiny_build = config_command(
    "build",
    _tiny_world_config,
    run_tiny_build,
    help="Build the tiny world (data, tokenizer, SFT policy, reward backbone), or reuse the "
    "cache. Every TinyWorldConfig field is an option; changing one changes the cache key.",
    path=["tiny", "build"],
    extras=(
        Extra(
            "out",
            "Where to build; default $ALIGN_CACHE/tiny-world (~/.cache/align/tiny-world).",
            click.Path(file_okay=False),
        ),
        Extra("force", "Rebuild even when a matching build is cached.", is_flag=True,
              default=False),  # fmt: skip
    ),
)


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


def _ppo_config() -> type:
    from align.ppo.config import PPOConfig  # lazy: loads torch; keeps 'align --help' fast

    return PPOConfig


def run_ppo_command(cfg, invocation: Invocation) -> None:
    """Re-launch if asked, then train with a progress bar and report the held-out score."""
    from align.ppo.config import check_inputs  # lazy: loaded already with the config class

    check_inputs(cfg)  # a missing input: one line, before any process starts or model loads
    relaunch(invocation)
    # lazy: transformers and the trainer load only to train (keeps 'align --help' fast)
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


ppo = config_command(
    "ppo",
    _ppo_config,
    run_ppo_command,
    help="PPO with actor, reference, critic and reward functions. Every PPOConfig field is an "
    "option (e.g. --beta 0.1 --total_steps 20 --rollout.engine vllm); --config tiny is the "
    "shipped tiny-world config, where a command line with no model path and no --config "
    "starts; once a model path is given, every input is required.",
    extras=LAUNCH_EXTRAS,
)

#: The generated commands and the group (by its path of words) each belongs to.
GENERATED: list[tuple[tuple[str, ...], click.Command]] = [
    ((), ppo),
    ((), pei),
    ((), filter_command),
    ((), sft_command),
    ((), pretrain_command),
    ((), chat_command),
    (("rm",), rm_train_command),
    (("rm",), rm_eval_command),
    (("rm",), serve_command),
    (("eval",), gsb_command),
    (("eval",), mcq_command),
    (("data",), data_bucket),
    (("data",), synth_command),
    (("tiny",), tiny_build),
]


@data_app.command("validate")
def data_validate(
    path: Path = typer.Argument(..., help="JSONL, Parquet, CSV file or saved datasets directory."),
    kind: str = typer.Option(..., help="Record kind: prompts, prefs, sft or mcq."),
    max_errors: int = typer.Option(20, help="How many errors to list at most."),
) -> None:
    """Check a data file against a record contract; exit 2 when any row is invalid or the file
    has no records."""
    from align.core.data import validate  # lazy: loads datasets; keeps 'align --help' fast

    report = validate(path, kind, max_errors=max_errors)
    if report.n_rows == 0:
        raise ValueError(f"{path}: the file has no records (expected {kind} records)")
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
    # lazy: these load datasets, kept off 'align --help'
    from align.core.data import write_jsonl
    from align.core.pref_data import financeiq_prefs

    conversion = financeiq_prefs(directory)
    n = write_jsonl(conversion.records, out)
    console.print(f"{out}: {n} preference pairs", markup=False, highlight=False)
    for reason, count in conversion.skipped.items():
        console.print(f"left out {count}: {reason}", markup=False, highlight=False)


def _write_error_message(error: OSError) -> str:
    """A failed write (read-only, full): the file and the reason, without the errno prefix."""
    reason = error.strerror or str(error)
    where = f" {error.filename}" if error.filename else ""
    return f"cannot write{where}: {reason}"


def cli() -> click.Group:
    """The whole ``align`` command tree: the typer app plus the generated commands."""
    root = typer.main.get_command(app)
    for path, command in GENERATED:
        group = root
        for word in path:
            group = group.commands[word]
        group.add_command(command)
    root.add_command(plan_command)  # reads a run's config; not a config command itself
    return root


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """An old spelling's warning as one line (``warning: ...``); others as Python shows them."""
    if issubclass(category, ConfigWarning):
        err_console.print(f"warning: {message}", markup=False, highlight=False)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def _fail(message: str) -> int:
    message = " ".join(message.split())
    err_console.print(f"error: {message}", markup=False, highlight=False)
    return 2


def _click_error(error: Exception) -> int | None:
    """The exit status for click's own exceptions (typer carries its own copy of click, so
    they are recognised by shape): help and exits pass through, usage errors are one line."""
    name = type(error).__name__
    if name == "NoArgsIsHelpError":
        error.show()
        return error.exit_code
    if name == "Exit" or (name == "Abort" and not hasattr(error, "format_message")):
        return getattr(error, "exit_code", 1)
    if hasattr(error, "format_message") and hasattr(error, "exit_code"):
        if error.exit_code != 2:
            error.show()
            return error.exit_code
        return _fail(error.format_message())
    return None


def _user_error(error: Exception) -> int | None:
    """Exit status 2 and one line for a user's mistake (and a refused write); None otherwise."""
    if isinstance(error, USER_ERRORS):
        return _fail(str(error) or type(error).__name__)
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
        return _fail(_write_error_message(error))
    return None


def main(args: list[str] | None = None) -> None:
    """Console entry point: one line and exit 2 for user errors, usage errors (an unknown
    option, a bad value) and a write the output location refuses (read-only, full, over
    quota). Third-party noise is hidden before any library loads unless --verbose."""
    args = sys.argv[1:] if args is None else list(args)
    apply_quiet(verbose_requested(args))
    _run_click(cli(), args, "align")


def run_recipe(
    script: str,
    load_class: Callable[[], type],
    run: Callable[[Any], object],
    help: str,
    args: list[str] | None = None,
    default_config: str | None = None,
) -> None:
    """A recipe script's entry point (``recipes/X.py``, already under ``accelerate launch``):
    the options, ``--help``, ``--show_config`` and one-line errors of the ``align`` commands,
    for the config class ``load_class()``; ``run(cfg)`` does the work. ``--verbose`` (anywhere)
    shows third-party output."""
    args = sys.argv[1:] if args is None else list(args)
    verbose = "--verbose" in args
    apply_quiet(verbose or verbose_from_env())  # before the libraries load
    args = [a for a in args if a != "--verbose"]
    command = config_command(
        script,
        load_class,
        lambda cfg, invocation: run(cfg),
        help=help,
        default_config=default_config,
    )
    _run_click(command, args, script)


def _run_click(command: click.Command, args: list[str], prog_name: str) -> None:
    warnings.showwarning = _show_warning
    try:
        code = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except Exception as error:
        code = _click_error(error)
        if code is None and not os.environ.get("ALIGN_DEBUG"):
            code = _user_error(error)
        if code is None:
            raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
