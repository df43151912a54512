"""Pure tests of align.filter.selection on synthetic score matrices with known μ and σ."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from align.filter import selection as F

NAN = float("nan")

# n = 4 answers per prompt; σ with ddof 1: for [a, b, a, b], σ = √(4·((b - a)/2)² / 3).
#   row 0  [0, 0, 0, 0]         μ = 0     σ = 0                      (all equal)
#   row 1  [0, 1, 0, 1]         μ = 0.5   σ = √(4·0.25/3) = 0.5774
#   row 2  [0, 2, 0, 2]         μ = 1     σ = √(4·1/3)    = 1.1547
#   row 3  [3, 4, 3, 4]         μ = 3.5   σ = 0.5774
#   row 4  [-3, -1, -3, -1]     μ = -2    σ = 1.1547
#   row 5  [0, nan, 1, 1]       invalid (NaN score)
#   row 6  [1, 1.2, 1, 1.2]     μ = 1.1   σ = √(4·0.01/3) = 0.11547
SCORES = np.array(
    [
        [0, 0, 0, 0],
        [0, 1, 0, 1],
        [0, 2, 0, 2],
        [3, 4, 3, 4],
        [-3, -1, -3, -1],
        [0, NAN, 1, 1],
        [1, 1.2, 1, 1.2],
    ]
)
CATEGORIES = ["a", "a", "a", "a", "b", "b", "b"]


def test_prompt_stats_hand_computed():
    mean, std, valid = F.prompt_stats(SCORES)
    assert valid.tolist() == [True, True, True, True, True, False, True]
    np.testing.assert_allclose(mean[valid], [0, 0.5, 1, 3.5, -2, 1.1], rtol=1e-12)
    s1, s2 = math.sqrt(1 / 3), math.sqrt(4 / 3)
    np.testing.assert_allclose(std[valid], [0, s1, s2, s1, s2, math.sqrt(0.04 / 3)], rtol=1e-12)
    assert math.isnan(mean[5]) and math.isnan(std[5])


def test_n_below_two_is_an_error():
    with pytest.raises(ValueError, match="n: expected >= 2"):
        F.prompt_stats(np.ones((3, 1)))


def test_thresholds_absolute_and_quantile():
    pool = np.array([0.0, 1, 2, 3, 4])
    assert F.std_threshold(pool, std_min=0.7) == 0.7
    assert F.std_threshold(pool, std_quantile=0.25) == 1.0  # linear: position 0.25·4 = 1
    assert F.std_threshold(pool) == -math.inf
    with pytest.raises(ValueError, match="at most one"):
        F.std_threshold(pool, std_min=1, std_quantile=0.2)
    means = np.arange(11.0)  # 0..10: the 10th / 90th percentiles are 1 and 9
    assert F.mean_interval(means, mean_quantiles=(0.1, 0.9)) == (1.0, 9.0)
    assert F.mean_interval(means, mean_range=(-1, 2)) == (-1.0, 2.0)
    assert F.mean_interval(means) == (-math.inf, math.inf)
    with pytest.raises(ValueError, match="lo <= hi"):
        F.mean_interval(means, mean_range=(2, 1))


def test_select_exact_survivors_and_shortfall():
    # floor 0.5, interval [-1, 3]: std step keeps rows 1 2 3 4 (row 0 σ = 0, row 6 σ = 0.115,
    # row 5 NaN); mean step keeps rows 1 (μ .5) and 2 (μ 1); rows 3 (3.5) and 4 (-2) are out.
    sel = F.select_prompts(SCORES, CATEGORIES, None, 0.5, [(-1.0, 3.0)])
    assert sel.counts == {
        "input": {"a": 4, "b": 3},
        "scored": {"a": 4, "b": 2},
        "std": {"a": 3, "b": 1},
        "mean": {"a": 2, "b": 0},
        "kept": {"a": 2, "b": 0},
    }
    assert sel.kept.tolist() == [2, 1]  # sorted by σ descending
    # keep = every survivor = 2; pre-filter shares 4/7, 3/7 → exact 1.14, 0.86 → a 1, b 1;
    # b has no survivor: its 1 goes to a.
    assert sel.quotas == {"a": 1, "b": 1}
    assert sel.final_quotas == {"a": 2, "b": 0}
    assert sel.shortfall == {"b": 1}
    assert sel.n_nan_dropped == 1


def test_zero_std_kept_when_asked():
    sel = F.select_prompts(SCORES, CATEGORIES, None, 0.0, [(-10.0, 10.0)], drop_zero_std=False)
    assert sel.counts["std"] == {"a": 4, "b": 2}
    sel = F.select_prompts(SCORES, CATEGORIES, None, 0.0, [(-10.0, 10.0)])
    assert sel.counts["std"] == {"a": 3, "b": 2}


def test_calibrated_intervals_hand_computed():
    bins = [
        {"low": -2.0, "high": -1.0, "n": 10, "accuracy": 0.5},
        {"low": -0.8, "high": 0.0, "n": 10, "accuracy": 0.8},
        {"low": 0.2, "high": 1.0, "n": 10, "accuracy": 0.9},
        {"low": 1.2, "high": 2.0, "n": 10, "accuracy": 0.6},
        {"low": 2.4, "high": 3.0, "n": 10, "accuracy": 0.85},
    ]
    # edges: -2 | (-1-0.8)/2 = -0.9 | (0+0.2)/2 = 0.1 | (1+1.2)/2 = 1.1 | (2+2.4)/2 = 2.2 | 3
    # accuracy >= 0.75: bins 1, 2 (merged) and 4.
    intervals = F.calibrated_intervals(bins, 0.75)
    np.testing.assert_allclose(intervals, [(-0.9, 1.1), (2.2, 3.0)], rtol=1e-12)
    inside = F.in_intervals(np.array([-1.0, -0.9, 0.1, 1.1, 1.5, 2.5, 3.1, NAN]), intervals)
    assert inside.tolist() == [False, True, True, True, False, True, False, False]


def test_largest_remainder_hand_computed():
    # 7 · (5, 3, 2)/10 = 3.5, 2.1, 1.4 → floors 3, 2, 1; the one left goes to a (remainder 0.5).
    assert F.largest_remainder({"a": 5, "b": 3, "c": 2}, 7) == {"a": 4, "b": 2, "c": 1}
    assert F.largest_remainder({"a": 1, "b": 0}, 3) == {"a": 3, "b": 0}


@pytest.mark.parametrize("seed", range(40))
def test_quotas_preserve_proportions_within_one(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 8))
    categories = [f"c{i}" for i in rng.integers(0, k, size=int(rng.integers(20, 300)))]
    keep = int(rng.integers(1, len(categories) + 1))
    quotas = F.category_quotas(categories, keep)
    assert sum(quotas.values()) == keep
    for c, q in quotas.items():
        assert abs(q - keep * categories.count(c) / len(categories)) < 1


def test_redistribute_shortfall_pro_rata():
    # a short by 4; b and c (quotas 6 and 2, plenty spare) take 4·6/8 = 3 and 4·2/8 = 1.
    final, short = F.redistribute_shortfall({"a": 6, "b": 6, "c": 2}, {"a": 2, "b": 50, "c": 50})
    assert final == {"a": 2, "b": 9, "c": 3} and short == {"a": 4}
    # c can only take 1 more: the rest flows to b in the next round.
    final, _ = F.redistribute_shortfall({"a": 6, "b": 6, "c": 2}, {"a": 2, "b": 50, "c": 3})
    assert final == {"a": 2, "b": 9, "c": 3}
    # not enough survivors anywhere: everyone keeps all they have.
    final, _ = F.redistribute_shortfall({"a": 5, "b": 5}, {"a": 1, "b": 2})
    assert final == {"a": 1, "b": 2}


def test_select_with_shortfall_keeps_total():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(60, 8))
    categories = ["x"] * 30 + ["y"] * 20 + ["z"] * 10
    scores[50:, :] = 5.0 + rng.normal(scale=1e-3, size=(10, 8))  # z: all means far above
    sel = F.select_prompts(scores, categories, 30, 0.0, [(-1.0, 1.0)])
    assert sel.quotas == {"x": 15, "y": 10, "z": 5}
    assert sel.final_quotas["z"] == 0 and sel.shortfall == {"z": 5}
    assert sum(sel.final_quotas.values()) == len(sel.kept) == 30
    assert sel.counts["kept"] == {c: sel.final_quotas[c] for c in "xyz"}


def _sequential_inclusion(weights: list[float], k: int) -> list[float]:
    """Exact inclusion probabilities of k successive weighted draws without replacement."""
    probs = [0.0] * len(weights)
    for order in itertools.permutations(range(len(weights)), k):
        p, left = 1.0, sum(weights)
        for i in order:
            p *= weights[i] / left
            left -= weights[i]
        for i in order:
            probs[i] += p
    return probs


def test_es_sampling_matches_sequential_draws():
    weights = [0.5, 1.0, 2.0, 4.0]
    trials, k = 20000, 2
    rng = np.random.default_rng(123)
    hits = np.zeros(len(weights))
    for _ in range(trials):
        hits[F.weighted_sample(np.array(weights), k, rng)] += 1
    exact = np.array(_sequential_inclusion(weights, k))
    freq = hits / trials
    # each frequency is a binomial mean: 4 standard errors
    assert np.all(np.abs(freq - exact) < 4 * np.sqrt(exact * (1 - exact) / trials))
    assert np.all(np.diff(freq) > 0)  # rises with the weight


def test_selection_frequency_rises_with_std():
    # 6 prompts of one category with σ = 0.2, 0.4, ..., 1.2 (all μ = 0); keep 2 over many seeds.
    d = np.arange(1, 7) * 0.2 * math.sqrt(3) / 2  # [−d, d, −d, d] has σ = 2d/√3
    scores = np.stack([[-x, x, -x, x] for x in d])
    counts = np.zeros(6)
    for seed in range(3000):
        counts[F.select_prompts(scores, ["c"] * 6, 2, 0.0, [(-1.0, 1.0)], seed=seed).kept] += 1
    np.testing.assert_allclose(F.prompt_stats(scores)[1], np.arange(1, 7) * 0.2, rtol=1e-12)
    assert np.all(np.diff(counts) > 0), counts
    exact = np.array(_sequential_inclusion(list(np.arange(1, 7) * 0.2), 2))
    assert np.all(np.abs(counts / 3000 - exact) < 4 * np.sqrt(exact * (1 - exact) / 3000))


def test_zero_weights_come_last():
    rng = np.random.default_rng(0)
    picked = F.weighted_sample(np.array([0.0, 1.0, 0.0, 2.0]), 3, rng)
    assert set(picked[:2].tolist()) == {1, 3} and picked[2] == 0  # then index order


def test_deterministic_under_seed():
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(200, 8))
    categories = [f"c{i % 5}" for i in range(200)]
    a = F.select_prompts(scores, categories, 50, 0.5, [(-0.5, 0.5)], seed=11)
    b = F.select_prompts(scores, categories, 50, 0.5, [(-0.5, 0.5)], seed=11)
    c = F.select_prompts(scores, categories, 50, 0.5, [(-0.5, 0.5)], seed=12)
    assert a.kept.tolist() == b.kept.tolist()
    assert a.kept.tolist() != c.kept.tolist()
    assert len(a.kept) == 50


@pytest.mark.parametrize("seed", range(10))
def test_kept_set_preserves_category_proportions_within_one(seed):
    rng = np.random.default_rng(seed)
    categories = [f"c{i}" for i in rng.integers(0, 4, size=300)]
    scores = rng.normal(size=(300, 8))  # μ ~ N(0, 1/8), σ ≈ 1: most prompts survive
    keep = int(rng.integers(10, 60))
    sel = F.select_prompts(scores, categories, keep, 0.5, [(-0.6, 0.6)], seed=seed)
    assert not sel.shortfall and len(sel.kept) == keep
    for c, kept in sel.counts["kept"].items():
        assert abs(kept - keep * categories.count(c) / 300) < 1
