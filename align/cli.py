"""The ``align`` command line.

User errors (bad input files, bad options) print one line and exit with status 2; set
``ALIGN_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from align import __version__

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

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)


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


@data_app.command("validate")
def data_validate(
    path: Path = typer.Argument(..., help="JSONL, Parquet, CSV file or saved datasets directory."),
    kind: str = typer.Option(..., help="Record kind: prompts, prefs, sft or mcq."),
    max_errors: int = typer.Option(20, help="How many errors to list at most."),
) -> None:
    """Check a data file against a record contract; exit 2 when any row is invalid."""
    from align.data import validate

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
