"""Evaluation reports in a run directory: JSON results, PNG charts, markdown linking them.

Layout (``run_dir`` is ``runs/<name>/`` or a PEI ``round-K/``)::

    run_dir/report.md          sections, each a table and its chart (relative links)
    run_dir/<stem>.json        the numbers behind a section
    run_dir/plots/<stem>.png   its chart

Every file is written atomically (temporary file in the same folder, then rename).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from align.core.io import atomic_write_json, atomic_write_text
from eval.charts import accuracy_chart, gsb_chart
from eval.gsb import GSBReport
from eval.mcq import MCQResult


def _alias_note(aliases: Mapping[str, str]) -> str:
    if not aliases:
        return ""
    pairs = ", ".join(f"{a} = {name}" for a, name in aliases.items())
    return f"\nChart labels (no CJK font was installed): {pairs}.\n"


def gsb_section(
    report: GSBReport,
    run_dir: str | Path,
    stem: str = "gsb",
    title: str = "Candidate vs baseline (good / same / bad)",
    extra: Mapping | None = None,
) -> str:
    """Write ``<stem>.json`` and ``plots/<stem>.png``; the markdown section linking them."""
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / f"{stem}.json", {**report.to_dict(), **dict(extra or {})})
    aliases = gsb_chart(report, run_dir / "plots" / f"{stem}.png", title)
    return (
        f"## {title}\n\n"
        f"good = the candidate's answer is better. Rates are over judged comparisons; "
        f"intervals: {report.confidence:.0%} percentile bootstrap, {report.n_boot} resamples.\n\n"
        + report.to_markdown()
        + f"\n![{title}](plots/{stem}.png)\n"
        + _alias_note(aliases)
    )


def mcq_section(
    results: Mapping[str, MCQResult],
    run_dir: str | Path,
    stem: str = "mcq",
    title: str = "Multiple-choice benchmark",
    extra: Mapping | None = None,
) -> str:
    """Write ``<stem>.json`` (with every prediction), ``plots/<stem>.png``; the section."""
    run_dir = Path(run_dir)
    data = {k: r.to_dict(with_predictions=True) for k, r in results.items()}
    atomic_write_json(run_dir / f"{stem}.json", {**dict(extra or {}), "results": data})
    per_scoring = {
        k: {c: v["accuracy"] for c, v in r.per_category.items()} for k, r in results.items()
    }
    aliases = accuracy_chart(per_scoring, run_dir / "plots" / f"{stem}.png", title)
    tables = "\n".join(r.to_markdown(f"scoring: {k}") for k, r in results.items())
    setup = ", ".join(f"{k}: {v}" for k, v in (extra or {}).items())
    return (
        f"## {title}\n\n"
        + (f"{setup}\n\n" if setup else "")
        + "macro average = mean of the per-category accuracies (FinanceIQ's score); micro = "
        "over all questions. A generated answer with no readable letter counts as wrong.\n\n"
        + tables
        + f"\n![{title}](plots/{stem}.png)\n"
        + _alias_note(aliases)
    )


def write_report(run_dir: str | Path, sections: Sequence[str], title: str = "Evaluation") -> Path:
    """``run_dir/report.md``: a title and the sections."""
    body = f"# {title}\n\n" + "\n".join(sections)
    return atomic_write_text(Path(run_dir) / "report.md", body)
