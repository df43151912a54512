"""Confidence-interval rules on per-prompt score statistics, shared by ``align filter`` (offline,
over a scored pool) and PPO's online filter (per step, over a running window of groups).

Pure functions over a ``prompts × n`` score matrix (numpy; no models), plus the reader of the
calibration file ``align rm eval --out`` writes:

1. :func:`prompt_stats` — per-prompt mean and std (ddof 1) of the ``n`` sampled answers' scores;
   a row with any NaN is invalid.
2. :func:`std_threshold` — the std floor: absolute, or a quantile of the pool.
3. :func:`mean_interval` / :func:`calibrated_intervals` — the mean interval(s): absolute,
   quantiles of the pool, or calibrated from the score bins of ``align rm eval``.
4. :func:`survivor_masks` — which prompts pass the std step and then the mean step.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

Interval = tuple[float, float]


# ------------------------------------------------------------------ statistics


def prompt_stats(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean [P], std [P], valid [P] bool)`` of a ``[P, n]`` score matrix.

    ``std`` uses ddof = 1 (the unbiased sample variance), so ``n >= 2`` is required. A row with
    any NaN (a sample the reward source could not score) is invalid; its mean and std are NaN.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected a [prompts, n] matrix, got shape {scores.shape}")
    if scores.shape[1] < 2:
        raise ValueError(
            f"n: expected >= 2 samples per prompt (std undefined), got {scores.shape[1]}"
        )
    valid = np.isfinite(scores).all(axis=1)
    mean = np.full(len(scores), np.nan)
    std = np.full(len(scores), np.nan)
    mean[valid] = scores[valid].mean(axis=1)
    std[valid] = scores[valid].std(axis=1, ddof=1)
    return mean, std, valid


def _check_quantile(name: str, q: float) -> None:
    if not 0 <= q <= 1:
        raise ValueError(f"{name}: expected a quantile in [0, 1], got {q}")


def std_threshold(
    std: np.ndarray, std_min: float | None = None, std_quantile: float | None = None
) -> float:
    """The std floor: ``std_min``, or the ``std_quantile`` of ``std`` (the scored pool, ``[P]``,
    linear interpolation), or ``-inf`` (no floor) when neither is given."""
    if std_min is not None and std_quantile is not None:
        raise ValueError("std_min and std_quantile: give at most one")
    if std_min is not None:
        return float(std_min)
    if std_quantile is None:
        return float("-inf")
    _check_quantile("std_quantile", std_quantile)
    if len(std) == 0:
        return float("-inf")
    return float(np.quantile(std, std_quantile))


def mean_interval(
    mean: np.ndarray,
    mean_range: Interval | None = None,
    mean_quantiles: Interval | None = None,
) -> Interval:
    """``(lo, hi)``: ``mean_range`` as given, or the ``mean_quantiles`` of ``mean`` (the scored
    pool, ``[P]``), or ``(-inf, inf)`` when neither is given. Bounds are inclusive."""
    if mean_range is not None and mean_quantiles is not None:
        raise ValueError("mean_range and mean_quantiles: give at most one")
    if mean_range is not None:
        lo, hi = mean_range
    elif mean_quantiles is not None:
        lo_q, hi_q = mean_quantiles
        _check_quantile("mean_quantiles", lo_q)
        _check_quantile("mean_quantiles", hi_q)
        if len(mean) == 0:
            return (float("-inf"), float("inf"))
        lo, hi = np.quantile(mean, [lo_q, hi_q])
    else:
        return (float("-inf"), float("inf"))
    if lo > hi:
        raise ValueError(f"mean interval: expected lo <= hi, got ({lo}, {hi})")
    return (float(lo), float(hi))


def calibrated_intervals(bins: Sequence[dict], overall_accuracy: float) -> list[Interval]:
    """The score intervals where the reward model is at least as accurate as overall.

    ``bins``: ``[{"low", "high", "n", "accuracy"}, ...]`` sorted by score (the ``score_bins`` of
    ``align rm eval``, equal-count bins of the pair mean score). A bin is kept when its accuracy
    is ``>= overall_accuracy``. Adjacent kept bins merge into one interval that also covers the gap
    between them (cut at the midpoint between a bin's ``high`` and the next bin's ``low``, so every
    score between the lowest and highest labelled score belongs to exactly one bin). The outer
    edges stay at the lowest / highest labelled score: beyond them there is no evidence.
    """
    if not bins:
        raise ValueError("calibration: expected at least one score bin")
    edges = [float(bins[0]["low"])]
    edges += [(float(a["high"]) + float(b["low"])) / 2 for a, b in zip(bins, bins[1:])]
    edges.append(float(bins[-1]["high"]))
    intervals: list[Interval] = []
    for k, b in enumerate(bins):
        if float(b["accuracy"]) < overall_accuracy:
            continue
        if intervals and intervals[-1][1] == edges[k]:
            intervals[-1] = (intervals[-1][0], edges[k + 1])
        else:
            intervals.append((edges[k], edges[k + 1]))
    return intervals


def in_intervals(x: np.ndarray, intervals: Sequence[Interval]) -> np.ndarray:
    """``[P]`` bool: ``x`` lies in at least one closed interval (NaN never does)."""
    x = np.asarray(x, dtype=np.float64)
    inside = np.zeros(x.shape, dtype=bool)
    for lo, hi in intervals:
        inside |= (x >= lo) & (x <= hi)
    return inside


def survivor_masks(
    mean: np.ndarray,
    std: np.ndarray,
    valid: np.ndarray,
    std_floor: float,
    intervals: Sequence[Interval],
    drop_zero_std: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(std_ok [P], mean_ok [P])`` bool: valid prompts with ``σ >= std_floor`` (and σ > 0 when
    ``drop_zero_std``: n equal scores carry no signal for PPO, even when the floor is <= 0); of
    those, the ones whose mean lies in one of the closed ``intervals``."""
    std_ok = valid & (std >= std_floor) & ((std > 0) if drop_zero_std else True)
    return std_ok, std_ok & in_intervals(mean, intervals)


# ------------------------------------------------------------------ calibration file


def load_calibration(path: str | os.PathLike[str]) -> tuple[list[dict], float]:
    """``(score_bins, overall accuracy)`` from the JSON written by ``align rm eval --out``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no such calibration file (write one with `align rm eval --out FILE`)"
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: expected the JSON of `align rm eval --out`: {err}") from None
    bins, overall = data.get("score_bins"), data.get("accuracy")
    if not isinstance(bins, list) or not bins:
        raise ValueError(f"{path}: field 'score_bins': expected a non-empty list of bins")
    for k, b in enumerate(bins):
        missing = {"low", "high", "accuracy"} - set(b)
        if missing:
            raise ValueError(f"{path}: score_bins[{k}]: missing fields {sorted(missing)}")
    if not isinstance(overall, int | float) or not math.isfinite(overall):
        raise ValueError(f"{path}: field 'accuracy': expected a number, got {overall!r}")
    return bins, float(overall)


# ------------------------------------------------------------------ rule fields of a config


def check_rule_fields(cfg: object) -> None:
    """Check the rule fields of a config (``std_min``, ``std_quantile``, ``mean_range``,
    ``mean_quantiles``, ``calibration``) in place: at most one std rule and one mean rule,
    ``(lo, hi)`` pairs with ``lo <= hi`` (made floats), quantiles in [0, 1]. One line naming
    the field on failure."""
    if cfg.std_min is not None and cfg.std_quantile is not None:
        raise ValueError("std_min, std_quantile: give at most one")
    means = [cfg.mean_range, cfg.mean_quantiles, cfg.calibration]
    if sum(m is not None for m in means) > 1:
        raise ValueError("mean_range, mean_quantiles, calibration: give at most one")
    for name in ("mean_range", "mean_quantiles"):
        value = getattr(cfg, name)
        if value is None:
            continue
        if len(value) != 2 or float(value[0]) > float(value[1]):
            raise ValueError(f"{name}: expected (lo, hi) with lo <= hi, got {value}")
        setattr(cfg, name, (float(value[0]), float(value[1])))
    for name, q in (
        ("std_quantile", cfg.std_quantile),
        *(("mean_quantiles", x) for x in cfg.mean_quantiles or ()),
    ):
        if q is not None and not 0 <= q <= 1:
            raise ValueError(f"{name}: expected quantiles in [0, 1], got {q}")
