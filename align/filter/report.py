"""The report of ``align filter``: ``report.md``, ``summary.json``, ``mu.png``, ``sigma.png``.

Counts per category after each step, kept share per category, quotas and shortfalls, the
thresholds, and histograms of the prompts' score mean μ and std σ with the thresholds marked.
Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from align.core.io import atomic_path, atomic_write_text
from align.filter.selection import STEPS, Selection

STEP_HELP = {
    "input": "prompts read",
    "scored": "every sample scored (None/NaN/inf scores drop the prompt)",
    "std": "σ ≥ std floor (and σ > 0 unless drop_zero_std is off)",
    "mean": "μ inside the mean interval(s)",
    "kept": "drawn with weight σ^α within the category quotas",
}


def _jsonable(x):
    """Infinities as the strings "inf" / "-inf" (JSON has no infinity)."""
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def _fmt(x: float) -> str:
    return "−∞" if x == -math.inf else "+∞" if x == math.inf else f"{x:+.4f}"


def _counts_table(result) -> list[str]:
    lines = [
        "| category | " + " | ".join(STEPS) + " | kept share | quota | final quota |",
        "|---|" + "---|" * (len(STEPS) + 3),
    ]
    share = result.kept_share
    for c in result.counts["input"]:
        row = [str(result.counts[s][c]) for s in STEPS]
        quota, final = result.quotas.get(c, 0), result.final_quotas.get(c, 0)
        lines.append(f"| {c} | " + " | ".join(row) + f" | {share[c]:.1%} | {quota} | {final} |")
    totals = [str(sum(result.counts[s].values())) for s in STEPS]
    n_in = sum(result.counts["input"].values())
    kept = sum(result.counts["kept"].values())
    lines.append(
        "| **all** | " + " | ".join(totals) + f" | {kept / n_in:.1%} | "
        f"{sum(result.quotas.values())} | {sum(result.final_quotas.values())} |"
    )
    return lines


def to_markdown(result, rule: dict) -> str:
    """The report as markdown."""
    t = result.thresholds
    intervals = ", ".join(f"[{_fmt(lo)}, {_fmt(hi)}]" for lo, hi in t["mean_intervals"])
    timing = result.timing
    lines = [
        "# Prompt filtering report",
        "",
        f"{result.n_prompts} prompts; {result.generated} sampled in this run, {result.cached} "
        f"read from the cache; {result.truncated_prompts} prompts left-truncated.",
        "",
        f"- std floor: σ ≥ {_fmt(t['std_min'])} ({rule['std']})",
        f"- mean interval(s): {intervals} ({rule['mean']})",
        f"- sampling and scoring: {timing['total_s']:.1f} s (generate {timing['generate_s']:.1f} "
        f"s, score {timing['score_s']:.1f} s), {timing['prompts_per_s']:.2f} prompts/s, "
        f"{result.generated_tokens} tokens generated",
        "",
        "## Prompts per category after each step",
        "",
        *_counts_table(result),
        "",
        *(f"- **{s}**: {STEP_HELP[s]}" for s in STEPS),
        "",
    ]
    for c, lack in result.shortfall.items():
        lines.append(
            f"> warning: {c} had {lack} survivors fewer than its quota {result.quotas[c]}; "
            "the shortfall went to the other categories pro rata."
        )
    lines += ["", "![score mean](mu.png)", "", "![score std](sigma.png)", ""]
    return "\n".join(lines)


def _histogram(path: Path, values: np.ndarray, kept: np.ndarray, lines: list, title: str) -> None:
    import matplotlib  # lazy: matplotlib loads only to draw the report's plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above, after the Agg backend is chosen

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    finite = values[np.isfinite(values)]
    bins = np.histogram_bin_edges(finite, bins=30) if len(finite) else 10
    ax.hist(finite, bins=bins, color="#bbbbbb", label="scored pool")
    ax.hist(values[kept], bins=bins, color="#1f77b4", label="kept")
    for x, label, color in lines:
        if math.isfinite(x):
            ax.axvline(x, color=color, linestyle="--", linewidth=1.5, label=label)
    ax.set_title(title)
    ax.set_ylabel("prompts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(path, keep_suffix=True) as tmp:  # savefig reads the format from it
            fig.savefig(tmp)
    finally:
        plt.close(fig)


def _plots(folder: Path, selection: Selection) -> None:
    kept = np.zeros(len(selection.mean), bool)
    kept[selection.kept] = True
    t = selection.thresholds
    mean_lines = []
    for k, (lo, hi) in enumerate(t.mean_intervals):
        label = "mean interval" if k == 0 else None
        mean_lines += [(lo, label, "#d62728"), (hi, None, "#d62728")]
    _histogram(folder / "mu.png", selection.mean, kept, mean_lines, "score mean μ per prompt")
    _histogram(
        folder / "sigma.png",
        selection.std,
        kept,
        [(t.std_min, "std floor", "#d62728")],
        "score std σ per prompt (ddof 1)",
    )


def rule_text(std_rule: dict, mean_rule: dict) -> dict:
    """The std floor and mean filter that were applied, as ``{"std": …, "mean": …}`` text."""
    return {
        "std": ", ".join(f"{k}={v}" for k, v in std_rule.items()),
        "mean": ", ".join(f"{k}={v}" for k, v in mean_rule.items()),
    }


def write_report(folder: Path, result, selection: Selection, config: dict, rule: dict) -> None:
    """``report.md``, ``summary.json`` and the two histograms into ``folder``; ``config`` is the
    run's resolved config, ``rule`` the :func:`rule_text` of its filters."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = {
        "config": config,
        "n_prompts": result.n_prompts,
        "generated": result.generated,
        "cached": result.cached,
        "truncated_prompts": result.truncated_prompts,
        "generated_tokens": result.generated_tokens,
        "thresholds": result.thresholds,
        "counts": result.counts,
        "kept_share": result.kept_share,
        "quotas": result.quotas,
        "final_quotas": result.final_quotas,
        "shortfall": result.shortfall,
        "timing": result.timing,
    }
    text = json.dumps(_jsonable(summary), indent=2, ensure_ascii=False, default=str) + "\n"
    atomic_write_text(folder / "summary.json", text)
    atomic_write_text(folder / "report.md", to_markdown(result, rule))
    _plots(folder, selection)
