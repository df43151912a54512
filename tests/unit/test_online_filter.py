"""PPO's online filter: its pure decisions, its window and state, and the experience rows it
stacks; its rules agree with ``align filter``'s on the same pool."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from align.core.checkpoints import load_data_only
from align.core.mixture import MixtureSampler
from align.filter import selection as F
from align.ppo import online_filter as O
from align.ppo.config import PPOConfig
from align.ppo.trainer import Experience, build_sequences, completion_logprobs

NAN = float("nan")


def make_filter(**rules) -> O.OnlineFilter:
    return O.OnlineFilter(O.OnlineFilterConfig(enabled=True, **rules), ["a", "b"], 8, seed=0)


def test_drop_reasons_hand_computed():
    scores = np.array([[1.0, 1.0], [0.0, 2.0], [5.0, 7.0], [NAN, 1.0], [2.0, 2.5]])
    mean, std, valid = F.prompt_stats(scores)
    # σ: 0, √2, √2, —, 0.354; floor 0.5 drops group 0 (σ = 0) and group 4 (σ < 0.5);
    # mean 6 of group 2 lies outside [0, 3]; group 3 has an unscored sample
    reasons = O.drop_reasons(mean, std, valid, 0.5, [(0.0, 3.0)], drop_zero_std=True)
    assert reasons == ["std", None, "mean", "invalid", "std"]
    # no floor: σ = 0 still drops unless drop_zero_std is off
    assert O.drop_reasons(mean, std, valid, -math.inf, [(-9, 9)], True)[0] == "std"
    assert O.drop_reasons(mean, std, valid, -math.inf, [(-9, 9)], False)[0] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rules_agree_with_align_filter_on_the_same_pool(seed):
    """A window holding exactly the pool gives align filter's thresholds, and the groups that
    pass are the survivors select_prompts keeps (keep=None), the drops its per-step counts."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(60, 4)).astype(float)  # ties: many σ = 0 groups
    scores[rng.random(60) < 0.1, 1] = NAN
    categories = list(rng.choice(["a", "b", "c"], size=60))
    mean, std, valid = F.prompt_stats(scores)
    rules = {"std_quantile": 0.3, "mean_quantiles": (0.1, 0.9)}
    online = make_filter(**rules, window=60)
    online.observe(mean[valid], std[valid])
    floor, intervals = online.thresholds()
    assert floor == F.std_threshold(std[valid], std_quantile=0.3)
    assert intervals == [F.mean_interval(mean[valid], mean_quantiles=(0.1, 0.9))]
    reasons = O.drop_reasons(mean, std, valid, floor, intervals, True)
    offline = F.select_prompts(scores, categories, None, floor, intervals)
    assert {i for i, r in enumerate(reasons) if r is None} == set(offline.kept.tolist())
    steps = {k: sum(v.values()) for k, v in offline.counts.items()}
    drops = Counter(reasons)
    assert drops["invalid"] == steps["input"] - steps["scored"]
    assert drops["std"] == steps["scored"] - steps["std"]
    assert drops["mean"] == steps["std"] - steps["mean"]


def test_take_groups_fills_open_slots_in_order():
    slots = {"a": 1, "b": 2}
    taken = O.take_groups(["a", "a", "b", "b", "b"], [True, True, False, True, True], slots)
    assert taken == [True, False, False, True, True]
    assert slots == {"a": 0, "b": 0}


def test_backfill_takes_highest_std_first_and_invalid_last():
    candidates = [("a", 0.0), ("a", NAN), ("b", 0.2), ("a", 0.5), ("b", 0.0), ("a", 0.0)]
    # a: 0.5 (3), then the σ = 0 ones in order (0, 5), the invalid one (1) last
    assert O.backfill(candidates, {"a": 2, "b": 1}) == [0, 2, 3]
    assert O.backfill(candidates, {"a": 4}) == [0, 1, 3, 5]
    with pytest.raises(RuntimeError, match="category 'b': 3 groups to backfill, only 2"):
        O.backfill(candidates, {"b": 3})


def test_split_budget_pro_rata_when_short():
    assert O.split_budget({"a": 3, "b": 1, "c": 0}, 10) == {"a": 3, "b": 1}
    # exact shares 1.5 / 0.5, floors 1 / 0; the unit left goes to the larger weight (a)
    assert O.split_budget({"a": 3, "b": 1}, 2) == {"a": 2}
    assert O.split_budget({"a": 3, "b": 1}, 0) == {}


def test_draws_stay_in_their_category_uniform_within_it():
    categories = ["a", "b", "a", "c", "a", "b"]
    sampler = MixtureSampler(categories, {"a": 1.0, "b": 5.0, "c": 1.0})
    gen = torch.Generator().manual_seed(0)
    rows = O.draw_in_categories(sampler.probs, categories, {"a": 3000, "c": 5}, gen)
    assert len(rows) == 3005 and {categories[i] for i in rows[:3000]} == {"a"}
    assert rows[3000:] == [3] * 5
    share = Counter(rows[:3000])
    for row in (0, 2, 4):  # uniform within a: 1000 each, σ ≈ 26
        assert abs(share[row] - 1000) < 120


def test_window_keeps_the_latest_groups_and_the_state_round_trips(tmp_path):
    online = make_filter(std_quantile=0.5, window=5)
    online.observe(np.arange(4.0), np.arange(4.0) / 10)
    online.observe(np.array([10.0, 11.0, 12.0]), np.array([1.0, 1.1, 1.2]))
    assert online.window[:, 0].tolist() == [2.0, 3.0, 10.0, 11.0, 12.0]
    assert online.thresholds()[0] == 1.0  # median of 0.2, 0.3, 1.0, 1.1, 1.2
    path = tmp_path / "state.pt"
    torch.save({"online_filter": online.state_dict()}, path)
    again = make_filter(std_quantile=0.5, window=5)
    again.load_state_dict(load_data_only(path)["online_filter"])  # plain data: weights_only
    assert np.array_equal(again.window, online.window)
    probs = torch.ones(4, dtype=torch.float64) / 4
    draw = O.draw_in_categories
    assert draw(probs, "abab", {"a": 9}, again.generator) == draw(
        probs, "abab", {"a": 9}, online.generator
    )


def test_calibration_gives_the_accurate_bins(tmp_path):
    path = tmp_path / "eval.json"
    bins = [
        {"low": 0.0, "high": 1.0, "n": 10, "accuracy": 0.9},
        {"low": 2.0, "high": 3.0, "n": 10, "accuracy": 0.5},
    ]
    path.write_text(f'{{"accuracy": 0.7, "score_bins": {bins}}}'.replace("'", '"'))
    online = make_filter(calibration=str(path))
    assert online.thresholds()[1] == [(0.0, 1.5)]  # cut at the midpoint between the bins
    assert O.threshold_metrics(*online.thresholds()) == {
        "filter/mean_lo": 0.0,
        "filter/mean_hi": 1.5,
    }


def test_config_needs_groups_and_one_rule_of_each_kind():
    with pytest.raises(ValueError, match="online_filter.enabled: a group's std needs"):
        PPOConfig(online_filter={"enabled": True})
    with pytest.raises(ValueError, match="online_filter: std_min, std_quantile: give at most one"):
        PPOConfig(samples_per_prompt=2, online_filter={"std_min": 0.1, "std_quantile": 0.2})
    with pytest.raises(ValueError, match="mean_range: expected \\(lo, hi\\) with lo <= hi"):
        PPOConfig(samples_per_prompt=2, online_filter={"mean_range": (1, 0)})
    cfg = PPOConfig(samples_per_prompt=2, online_filter={"enabled": True, "std_min": 0.1})
    assert cfg.online_filter.std_rule == {"std_min": 0.1} and cfg.online_filter.mean_rule == {}


def _piece(model, prompts, completions, scores):
    ids, attn, pos, mask = build_sequences(prompts, completions, pad_id=0)
    exp = Experience(
        input_ids=ids, attention_mask=attn, position_ids=pos, mask=mask, old_logprobs=None,
        ref_logprobs=None, values=None, scores=torch.tensor(scores),
    )  # fmt: skip
    exp.old_logprobs = completion_logprobs(model, exp, 1.0)[0]
    return exp


@torch.no_grad()
def test_stacked_rows_keep_every_logprob(random_lm):
    """Pieces of different prompt and completion widths, stacked: each row's logprobs under the
    model are those of its piece (padding adds no attention), padded entries are masked."""
    one = _piece(random_lm, [[5, 6, 7], [8]], [[9, 10], [11, 12, 13, 14]], [1.0, 2.0])
    two = _piece(random_lm, [[20, 21, 22, 23, 24]], [[25]], [3.0])
    both = O.concat_experiences([one, two], pad_id=0)
    assert both.input_ids.shape == (3, 5 + 4) and both.mask.shape == (3, 4)
    assert both.scores.tolist() == [1.0, 2.0, 3.0]
    again = completion_logprobs(random_lm, both, 1.0)[0]
    for stacked, piece, row in ((0, one, 0), (1, one, 1), (2, two, 0)):
        width = int(piece.mask[row].sum())
        assert torch.equal(both.mask[stacked, :width], piece.mask[row, :width])
        assert not both.mask[stacked, width:].any()
        assert torch.equal(both.old_logprobs[stacked, :width], piece.old_logprobs[row, :width])
        torch.testing.assert_close(
            again[stacked, :width], piece.old_logprobs[row, :width], rtol=1e-5, atol=1e-5
        )
    info = O.merge_infos(
        [
            {"categories": ["a", "a", "b", "b"], "dropped": torch.tensor([0, 1, 0, 0]).bool(),
             "parts": {"r": torch.arange(4.0)}, "logprob_gap": (torch.tensor(1.0),
             torch.tensor(2.0), torch.tensor(0.5))},
            {"categories": ["c", "c"], "dropped": torch.tensor([0, 0]).bool(),
             "parts": {"r": torch.arange(2.0) + 10}, "logprob_gap": (torch.tensor(3.0),
             torch.tensor(4.0), torch.tensor(0.7))},
        ],
        [torch.tensor([2, 3]), torch.tensor([0, 1])],
    )  # fmt: skip
    assert info["categories"] == ["b", "b", "c", "c"]
    assert info["parts"]["r"].tolist() == [2.0, 3.0, 10.0, 11.0]
    assert [float(x) for x in info["logprob_gap"]] == [4.0, 6.0, pytest.approx(0.7)]
