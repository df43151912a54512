"""Good / same / bad (GSB) comparisons: counts, rates and bootstrap intervals (pure).

A judgement compares a candidate answer with a baseline answer (e.g. the SFT policy's) to the
same prompt: ``good`` (candidate better), ``same``, ``bad`` (candidate worse), or ``None`` (the
judge could not decide; counted as ``unjudged`` and left out of every rate). Per category and
overall, with ``n = good + same + bad``:

- win rate ``good / n``; win+tie rate (胜和率) ``(good + same) / n``; loss rate ``bad / n``;
- net win rate ``(good - bad) / n`` (docs/methods.md §4: the PPO gain G_d of a sub-domain).

Intervals are percentile bootstrap intervals: the judgements of a row are resampled with
replacement ``n_boot`` times (a multinomial draw of the three counts), the rates recomputed, and
the ``(1 - confidence)/2`` and ``(1 + confidence)/2`` quantiles taken. A row whose judgements are
all alike gets a zero-width interval (the bootstrap cannot see beyond its sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

VERDICTS = ("good", "same", "bad")
RATES = ("win", "win_tie", "loss", "net_win")
_ALIASES = {
    "good": "good", "g": "good", "win": "good", "better": "good", "1": "good", "+1": "good",
    "same": "same", "s": "same", "tie": "same", "equal": "same", "0": "same",
    "bad": "bad", "b": "bad", "loss": "bad", "lose": "bad", "worse": "bad", "-1": "bad",
}  # fmt: skip


def normalize_verdict(value: str | int | None, index: int | None = None) -> str | None:
    """``"good" | "same" | "bad"`` (or None) from a verdict as judges and users write it.

    Accepts the three words, ``win/tie/loss``, ``better/equal/worse``, ``g/s/b`` (any case) and
    the integers ``1 / 0 / -1``. Anything else raises ``ValueError`` naming the position.
    """
    if value is None:
        return None
    key = str(value).strip().lower() if not isinstance(value, bool) else None
    if key in _ALIASES:
        return _ALIASES[key]
    where = f"judgement {index}: " if index is not None else ""
    raise ValueError(
        f"{where}expected good/same/bad (or win/tie/loss, 1/0/-1, None), got {value!r}"
    )


@dataclass(frozen=True)
class GSBRow:
    """Counts, rates and ``[low, high]`` intervals of one category (or of all: ``"overall"``)."""

    category: str
    good: int
    same: int
    bad: int
    unjudged: int = 0
    rates: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Judged comparisons (``unjudged`` excluded)."""
        return self.good + self.same + self.bad

    @property
    def win_rate(self) -> float:
        return self.rates["win"]

    @property
    def win_tie_rate(self) -> float:
        return self.rates["win_tie"]

    @property
    def net_win_rate(self) -> float:
        return self.rates["net_win"]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["n"] = self.n
        out["intervals"] = {k: list(v) for k, v in self.intervals.items()}
        return out


@dataclass(frozen=True)
class GSBReport:
    """Per-category rows (in order of first appearance) and the overall row."""

    rows: list[GSBRow]
    overall: GSBRow
    n_boot: int
    confidence: float
    seed: int

    def row(self, category: str) -> GSBRow:
        for r in self.rows:
            if r.category == category:
                return r
        raise KeyError(f"no GSB row for category {category!r}")

    def to_dict(self) -> dict:
        return {
            "per_category": {r.category: r.to_dict() for r in self.rows},
            "overall": self.overall.to_dict(),
            "n_boot": self.n_boot,
            "confidence": self.confidence,
            "seed": self.seed,
        }

    def to_markdown(self, title: str | None = None) -> str:
        """A table: counts, the three rates with their intervals, and unjudged comparisons."""
        level = f"{self.confidence:.0%}"
        head = [
            f"| sub-domain | n | good | same | bad | win % | win+tie % | net win % ({level} CI) "
            "| unjudged |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines = [_markdown_row(r) for r in [*self.rows, self.overall]]
        lines[-1] = lines[-1].replace("| overall |", "| **overall** |", 1)
        text = "\n".join(head + lines) + "\n"
        return (f"### {title}\n\n" if title else "") + text


def _pct(x: float) -> str:
    return "—" if np.isnan(x) else f"{100 * x:.1f}"


def _markdown_row(r: GSBRow) -> str:
    def with_ci(name: str) -> str:
        low, high = r.intervals[name]
        return f"{_pct(r.rates[name])} [{_pct(low)}, {_pct(high)}]"

    return (
        f"| {r.category} | {r.n} | {r.good} | {r.same} | {r.bad} | {with_ci('win')} | "
        f"{with_ci('win_tie')} | {with_ci('net_win')} | {r.unjudged} |"
    )


def rates_from_counts(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Rates from counts ``[..., 3]`` (good, same, bad) → arrays of shape ``[...]`` (NaN if n=0)."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        good, same, bad = (counts[..., k] / n for k in range(3))
    return {"win": good, "win_tie": good + same, "loss": bad, "net_win": good - bad}


def bootstrap_intervals(
    counts: Sequence[int], n_boot: int, confidence: float, rng: np.random.Generator
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of every rate, resampling the ``n`` judgements of a row.

    ``counts``: (good, same, bad). Resampling n judgements with replacement is a multinomial
    draw of the three counts with the observed shares, so the draws are ``[n_boot, 3]``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        return {k: (float("nan"), float("nan")) for k in RATES}
    draws = rng.multinomial(n, counts / n, size=n_boot)
    tail = (1 - confidence) / 2
    out = {}
    for name, values in rates_from_counts(draws).items():
        low, high = np.quantile(values, [tail, 1 - tail])
        out[name] = (float(low), float(high))
    return out


def _row(
    category: str, verdicts: list[str | None], n_boot: int, confidence: float, rng
) -> GSBRow:
    counts = [sum(v == k for v in verdicts) for k in VERDICTS]
    rates = {k: float(v) for k, v in rates_from_counts(np.array(counts)).items()}
    return GSBRow(
        category,
        *counts,
        unjudged=sum(v is None for v in verdicts),
        rates=rates,
        intervals=bootstrap_intervals(counts, n_boot, confidence, rng),
    )


def summarize(
    judgements: Sequence[str | int | None],
    categories: Sequence[str],
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> GSBReport:
    """GSB rows per category (order of first appearance) and overall.

    ``judgements[i]`` is the verdict on comparison ``i`` (see :func:`normalize_verdict`),
    ``categories[i]`` its sub-domain. Deterministic for a given ``seed``.
    """
    if len(judgements) != len(categories):
        raise ValueError(
            f"judgements and categories: expected the same length, got {len(judgements)} "
            f"and {len(categories)}"
        )
    if n_boot < 1:
        raise ValueError(f"n_boot: expected >= 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected in (0, 1), got {confidence}")
    verdicts = [normalize_verdict(v, i) for i, v in enumerate(judgements)]
    rng = np.random.default_rng(seed)
    order = list(dict.fromkeys(categories))
    rows = [
        _row(c, [v for v, k in zip(verdicts, categories) if k == c], n_boot, confidence, rng)
        for c in order
    ]
    overall = _row("overall", verdicts, n_boot, confidence, rng)
    return GSBReport(rows, overall, n_boot, confidence, seed)
