"""Charts as PNG files (matplotlib, Agg; no pyplot state): GSB stacked bars per sub-domain, like
the XuanYuan reports' figures, and MCQ accuracy per category.

Category names are usually Chinese. matplotlib draws them with the first CJK font it finds
(:data:`CJK_FONTS`); on a machine without one, the labels that the default font cannot draw are
replaced by short aliases (``S1``, ``S2``, ...) and the alias → name table is returned, for the
report to print beside the chart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
from matplotlib import font_manager  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ft2font import FT2Font  # noqa: E402

from align.core.io import atomic_path  # noqa: E402
from eval.gsb import GSBReport  # noqa: E402

CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Heiti SC",
    "Arial Unicode MS",
)
_LABEL_BOX = {"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8}
GSB_COLORS = {"good": "#4caf50", "same": "#bdbdbd", "bad": "#e57373"}


def cjk_font() -> str | None:
    """The first installed font of :data:`CJK_FONTS`, or None."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


def _default_font_covers(text: str) -> bool:
    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))
    charmap = FT2Font(path).get_charmap()
    return all(ord(ch) in charmap for ch in text)


def chart_labels(names: Sequence[str], prefix: str = "S") -> tuple[list[str], dict[str, str]]:
    """``(labels, aliases)``: the names, or aliases for those no installed font can draw."""
    if cjk_font() is not None:
        return list(names), {}
    labels, aliases = [], {}
    for k, name in enumerate(names, start=1):
        if _default_font_covers(name):
            labels.append(name)
        else:
            labels.append(f"{prefix}{k}")
            aliases[f"{prefix}{k}"] = name
    return labels, aliases


def _figure(n_rows: float, width: float = 9.0) -> Figure:
    return Figure(figsize=(width, 1.2 + 0.45 * n_rows), dpi=110)


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return Path(path)


def _font_rc() -> dict:
    font = cjk_font()
    return {"font.family": [font, "DejaVu Sans"]} if font else {}


def gsb_chart(report: GSBReport, path: str | Path, title: str = "GSB vs baseline") -> dict:
    """Stacked horizontal bars (good / same / bad, % of judged) per sub-domain and overall.

    Returns the label aliases used (empty when every name could be drawn).
    """
    rows = [*report.rows, report.overall]
    labels, aliases = chart_labels([r.category for r in report.rows])
    labels.append("overall")
    with matplotlib.rc_context(_font_rc()):
        fig = _figure(len(rows))
        ax = fig.add_subplot()
        y = list(range(len(rows)))[::-1]
        left = [0.0] * len(rows)
        for verdict in ("good", "same", "bad"):
            share = [100 * getattr(r, verdict) / r.n if r.n else 0.0 for r in rows]
            ax.barh(y, share, left=left, color=GSB_COLORS[verdict], label=verdict, height=0.7)
            for yi, x0, s in zip(y, left, share):
                if s >= 7:
                    ax.text(x0 + s / 2, yi, f"{s:.0f}%", ha="center", va="center", fontsize=8)
            left = [a + b for a, b in zip(left, share)]
        for yi, r in zip(y, rows):
            net = 100 * r.net_win_rate if r.n else float("nan")
            low, high = (100 * v for v in r.intervals["net_win"])
            text = f"net {net:+.0f}% [{low:+.0f}, {high:+.0f}]  n={r.n}"
            ax.text(101, yi, text, va="center", fontsize=8)
        ax.set_yticks(y, labels)
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of judged comparisons")
        ax.set_title(title)
        ax.legend(ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.06), frameon=False)
        save_png(fig, path)
    return aliases


def accuracy_chart(
    per_scoring: dict[str, dict[str, float]],
    path: str | Path,
    title: str = "accuracy per category",
    chance: float | None = 0.25,
) -> dict:
    """Horizontal bars of accuracy (%) per category, one bar per scoring, with the macro mean
    as a dashed line per scoring and chance level dotted. ``per_scoring``:
    ``{scoring: {category: accuracy in [0, 1]}}``. Returns the label aliases used."""
    scorings = list(per_scoring)
    categories = list(dict.fromkeys(c for s in scorings for c in per_scoring[s]))
    labels, aliases = chart_labels(categories, prefix="C")
    height = 0.8 / max(len(scorings), 1)
    colors = ("#1976d2", "#ff9800", "#7b1fa2", "#009688")
    with matplotlib.rc_context(_font_rc()):
        fig = _figure(len(categories) * max(1, len(scorings)) * 0.6 + 1)
        ax = fig.add_subplot()
        base = list(range(len(categories)))[::-1]
        for k, scoring in enumerate(scorings):
            acc = [100 * per_scoring[scoring].get(c, float("nan")) for c in categories]
            y = [b + (len(scorings) - 1) * height / 2 - k * height for b in base]
            color = colors[k % len(colors)]
            ax.barh(y, acc, height=height, color=color, label=scoring)
            for yi, a in zip(y, acc):
                ax.text(a + 0.5, yi, f"{a:.1f}", va="center", fontsize=7, bbox=_LABEL_BOX)
            macro = sum(acc) / len(acc)
            ax.axvline(macro, color=color, ls="--", lw=1, label=f"{scoring} macro {macro:.1f}")
        if chance is not None:
            ax.axvline(100 * chance, color="black", ls=":", lw=1, label="chance")
        ax.set_yticks(base, labels)
        ax.set_xlim(0, 105)
        ax.set_xlabel("accuracy (%)")
        ax.set_title(title)
        ax.legend(fontsize=7, loc="lower right")
        save_png(fig, path)
    return aliases
