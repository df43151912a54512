"""Confidence-interval filtering of prompts (docs/methods.md §3): the statistics and the selection.

Pure functions over a ``prompts × n`` score matrix (numpy; no models, no files). The statistics
and the rules (steps 1–3) live in :mod:`align.core.score_rules`, shared with PPO's online filter
(:mod:`align.ppo.online_filter`), and are re-exported here:

1. :func:`prompt_stats` — per-prompt mean and std (ddof 1) of the ``n`` sampled answers' scores;
   a row with any NaN is invalid (the prompt is dropped and counted).
2. :func:`std_threshold` — the std floor: prompts with ``σ < floor`` (and, by default, σ = 0) are
   dropped (answers too alike for PPO to learn from). Absolute, or a quantile of the scored pool.
3. :func:`mean_interval` / :func:`calibrated_intervals` — the mean interval: prompts whose ``μ``
   lies outside are dropped (the reward model is least reliable at extreme scores). Absolute,
   quantiles of the pool, or calibrated: the score bins (from ``align rm eval``) whose pairwise
   accuracy is at least the overall accuracy.
4. :func:`category_quotas` — per-category quotas from the pre-filter proportions (largest
   remainder); :func:`redistribute_shortfall` gives a category's shortfall to the others pro rata.
5. :func:`weighted_sample` — Efraimidis–Spirakis sampling without replacement with weights
   ``w = σ^α`` (keys ``u^(1/w)``, compared as ``log(u)/w``).

:func:`select_prompts` runs the steps and counts the survivors per category after each one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from align.core.mixture import largest_remainder
from align.core.score_rules import (  # the rules, shared with PPO's online filter; re-exported
    Interval,
    calibrated_intervals,
    in_intervals,
    mean_interval,
    prompt_stats,
    std_threshold,
    survivor_masks,
)

__all__ = [
    "STEPS",
    "Interval",
    "Selection",
    "Thresholds",
    "calibrated_intervals",
    "category_quotas",
    "es_log_keys",
    "in_intervals",
    "mean_interval",
    "prompt_stats",
    "redistribute_shortfall",
    "select_prompts",
    "std_threshold",
    "survivor_masks",
    "weighted_sample",
]

STEPS = ("input", "scored", "std", "mean", "kept")


# ------------------------------------------------------------------ quotas


def category_quotas(categories: Sequence[str], keep: int) -> dict[str, int]:
    """Prompts to keep per category, proportional to the categories' shares of ``categories``
    (the pre-filter pool), by largest remainder; the quotas sum to ``keep``."""
    counts = Counter(categories)
    return largest_remainder(dict(sorted(counts.items())), keep)


def redistribute_shortfall(
    quotas: dict[str, int], available: dict[str, int]
) -> tuple[dict[str, int], dict[str, int]]:
    """``(final quotas, shortfall per category)``.

    A category with fewer survivors than its quota keeps them all; its shortfall goes to the
    categories that still have survivors to spare, pro rata to their original quotas (largest
    remainder), repeated until everything is placed or no category has spare survivors. The
    total is ``min(Σ quotas, Σ available)``.
    """
    final = {c: min(q, available.get(c, 0)) for c, q in quotas.items()}
    shortfall = {c: q - final[c] for c, q in quotas.items() if q > final[c]}
    left = sum(shortfall.values())
    while left > 0:
        spare = {c: available.get(c, 0) - final[c] for c in quotas}
        open_ = {c: quotas[c] or 1 for c, s in spare.items() if s > 0}
        if not open_:
            break
        share = largest_remainder(open_, left)
        for c, extra in share.items():
            given = min(extra, spare[c])
            final[c] += given
            left -= given
    return final, shortfall


# ------------------------------------------------------------------ sampling


def es_log_keys(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[P]`` Efraimidis–Spirakis keys ``log(u)/w`` (the log of ``u^(1/w)``, same order).

    A zero weight gets ``-inf``: it is taken only after every positive-weight item.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise ValueError("weights: expected finite values >= 0")
    u = rng.random(len(weights))
    u = np.where(u == 0.0, np.nextafter(0.0, 1.0), u)
    with np.errstate(divide="ignore"):
        return np.where(weights > 0, np.log(u) / np.where(weights > 0, weights, 1.0), -np.inf)


def weighted_sample(weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``k`` items drawn without replacement with probability ∝ ``weights`` at each
    draw (Efraimidis–Spirakis: the ``k`` largest keys ``u^(1/w)``), in draw order."""
    if not 0 <= k <= len(weights):
        raise ValueError(f"k: expected 0 <= k <= {len(weights)}, got {k}")
    keys = es_log_keys(weights, rng)
    # Stable sort on -keys: equal keys (only -inf for zero weights) keep their index order.
    return np.argsort(-keys, kind="stable")[:k]


# ------------------------------------------------------------------ the whole selection


@dataclass
class Thresholds:
    """The thresholds one selection used."""

    std_min: float
    mean_intervals: list[Interval]

    def as_dict(self) -> dict:
        return {"std_min": self.std_min, "mean_intervals": [list(i) for i in self.mean_intervals]}


@dataclass
class Selection:
    """What :func:`select_prompts` decided.

    ``kept``: indices into the input, sorted by σ descending (ties: index). ``counts[step]``:
    survivors per category after each step of ``STEPS``. ``quotas``: the pre-filter quotas;
    ``final_quotas``: after redistribution; ``shortfall``: what each short category lacked.
    """

    kept: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    valid: np.ndarray
    thresholds: Thresholds
    counts: dict[str, dict[str, int]]
    quotas: dict[str, int]
    final_quotas: dict[str, int]
    shortfall: dict[str, int] = field(default_factory=dict)

    @property
    def n_nan_dropped(self) -> int:
        return int((~self.valid).sum())


def _count(categories: Sequence[str], mask: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    counts = Counter(c for c, m in zip(categories, mask) if m)
    return {name: counts.get(name, 0) for name in names}


def _sample_per_category(
    categories: np.ndarray,
    survivors: np.ndarray,
    weights: np.ndarray,
    quotas: dict[str, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """Indices drawn per category (categories in sorted order, each from its own keys)."""
    chosen = []
    keys = es_log_keys(weights, rng)  # one key per prompt, drawn in input order
    for name in sorted(quotas):
        idx = np.flatnonzero(survivors & (categories == name))
        order = idx[np.argsort(-keys[idx], kind="stable")]
        chosen.append(order[: quotas[name]])
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def select_prompts(
    scores: np.ndarray,
    categories: Sequence[str],
    keep: int | None,
    std_floor: float,
    intervals: Sequence[Interval],
    alpha: float = 1.0,
    seed: int = 0,
    drop_zero_std: bool = True,
) -> Selection:
    """Steps 1–3 of docs/methods.md §3 on a ``[P, n]`` score matrix.

    ``std_floor`` / ``intervals`` come from :func:`std_threshold` and :func:`mean_interval` /
    :func:`calibrated_intervals` (computed on the scored pool by the caller, so they can be
    reported). ``keep=None`` keeps every survivor. Weights are ``σ^α``; the random keys come from
    ``numpy.random.default_rng(seed)``, one per prompt in input order, so the selection is a
    function of the inputs and the seed alone. ``drop_zero_std``: a prompt whose ``n`` answers all
    score the same (σ = 0) carries no signal for PPO and is dropped at the std step even when the
    floor is ≤ 0 (a quantile floor is 0 whenever over that share of the pool has σ = 0).
    """
    categories_arr = np.asarray(categories, dtype=object)
    if len(categories_arr) != len(scores):
        raise ValueError(f"categories: expected {len(scores)} entries, got {len(categories_arr)}")
    if alpha < 0:
        raise ValueError(f"alpha: expected >= 0, got {alpha}")
    mean, std, valid = prompt_stats(scores)
    names = sorted(set(categories))
    std_ok, mean_ok = survivor_masks(mean, std, valid, std_floor, intervals, drop_zero_std)
    masks = {"input": np.ones(len(scores), bool), "scored": valid, "std": std_ok, "mean": mean_ok}
    counts = {step: _count(categories, m, names) for step, m in masks.items()}
    target = int(mean_ok.sum()) if keep is None else keep
    quotas = category_quotas(list(categories), target)
    final, shortfall = redistribute_shortfall(quotas, counts["mean"])
    weights = np.where(mean_ok, np.nan_to_num(std, nan=0.0), 0.0) ** alpha
    rng = np.random.default_rng(seed)
    chosen = _sample_per_category(categories_arr, mean_ok, weights, final, rng)
    kept = chosen[np.lexsort((chosen, -std[chosen]))]
    kept_mask = np.zeros(len(scores), bool)
    kept_mask[kept] = True
    counts["kept"] = _count(categories, kept_mask, names)
    return Selection(
        kept=kept,
        mean=mean,
        std=std,
        valid=valid,
        thresholds=Thresholds(float(std_floor), [tuple(map(float, i)) for i in intervals]),
        counts=counts,
        quotas=quotas,
        final_quotas=final,
        shortfall=shortfall,
    )
