"""``align filter``: confidence-interval filtering of prompts (docs/methods.md §3).

Generated from :class:`align.filter.run.FilterConfig` (:mod:`align.cli.config_command`) and
registered in ``align/cli/app.py``.
"""

from __future__ import annotations

import warnings

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from align.cli.config_command import Invocation, config_command

#: Old flag spellings without a field of their own (the others are FilterConfig's renames).
ALIASES = {
    "--no-cache": ["--use_cache", "false"],
    "--no_cache": ["--use_cache", "false"],
    "--keep-zero-std": ["--drop_zero_std", "false"],
    "--keep_zero_std": ["--drop_zero_std", "false"],
}


def _print_result(result, console) -> None:
    from align.filter.selection import STEPS  # lazy: loads torch; keeps 'align --help' fast

    table = Table(title=f"{len(result.kept)} of {result.n_prompts} prompts kept")
    for column in ("category", *STEPS, "kept share"):
        table.add_column(column, justify="left" if column == "category" else "right")
    share = result.kept_share
    for c in result.counts["input"]:
        table.add_row(c, *(str(result.counts[s][c]) for s in STEPS), f"{share[c]:.1%}")
    console.print(table)
    t = result.timing
    console.print(
        f"sampled {result.generated} prompts ({result.cached} from the cache) in "
        f"{t['total_s']:.1f} s: {t['prompts_per_s']:.2f} prompts/s",
        markup=False,
    )
    console.print(
        f"kept prompts: {result.out}\nreport: {result.report_dir / 'report.md'}",
        markup=False,
        soft_wrap=True,
    )


def _run(cfg, console):
    from align.filter.run import check_paths, run_filter  # lazy: loads torch; as above

    check_paths(cfg)  # a bad output or policy path fails before the progress bar appears
    with Progress(
        TextColumn("[bold]sample & score"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("filter", total=None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run_filter(cfg, progress=lambda d, n: bar.update(task, completed=d, total=n))
    for w in caught:
        if str(w.message).startswith(("category", "keep:")):
            console.print(f"warning: {w.message}", markup=False)
    return result


def _config_class() -> type:
    from align.filter.run import FilterConfig  # lazy: loads torch; keeps 'align --help' fast

    return FilterConfig


def run_filter_command(cfg, invocation: Invocation) -> None:
    """Sample, score, select; print the per-category table and where the outputs are."""
    console = Console()
    _print_result(_run(cfg, console), console)


filter_command = config_command(
    "filter",
    _config_class,
    run_filter_command,
    help="Sample n answers per prompt, score them, drop prompts whose score std is too low or "
    "whose mean is extreme, and keep a std-weighted sample with each category's share. Every "
    "FilterConfig field is an option (e.g. --rewards tiny --n 8 --keep 500 --out kept.jsonl). "
    "With no policy and no --config it starts from the shipped tiny config (the tiny world); "
    "once a policy is given, prompts and rewards are required.",
    aliases=ALIASES,
)
