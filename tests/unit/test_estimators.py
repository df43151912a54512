"""Advantage estimators, loss aggregation modes, clip-higher, TIS weights and critic diagnostics
of :mod:`align.core.core_algos`: hand-computed values (arithmetic next to each) and invariances.

The running example: 2 prompts × 3 answers, scores ``[1, 0, 2 | 3, 3, 0]``.
"""

from __future__ import annotations

import math

import pytest
import torch

from align.core.core_algos import (
    ADVANTAGE_ESTIMATORS,
    LOSS_AGG_MODES,
    MAX_LOG_RATIO,
    add_final_score,
    aggregate,
    discounted_returns,
    explained_variance,
    group_mean_baseline,
    grpo_scores,
    policy_loss,
    rloo_scores,
    truncated_is_weights,
)

F64 = torch.float64
SCORES = torch.tensor([1.0, 0.0, 2.0, 3.0, 3.0, 0.0], dtype=F64)
ALL = torch.ones(6, dtype=torch.bool)
R3 = math.sqrt(3.0)


def close(a, b, atol=1e-9):
    return torch.allclose(torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64), atol=atol)


# ----------------------------------------------------------------- group-relative scores


def test_grpo_scores_hand_computed():
    # prompt 1: mean 1, deviations (0, -1, 1), unbiased var (0 + 1 + 1) / 2 = 1, std 1
    # prompt 2: mean 2, deviations (1, 1, -2), unbiased var (1 + 1 + 4) / 2 = 3, std √3
    expected = [
        0,
        -1 / (1 + 1e-6),
        1 / (1 + 1e-6),
        1 / (R3 + 1e-6),
        1 / (R3 + 1e-6),
        -2 / (R3 + 1e-6),
    ]
    assert close(grpo_scores(SCORES, ALL, 3), expected)


def test_dr_grpo_is_the_group_mean_baseline_hand_computed():
    # the deviations above, not divided by the std (Dr. GRPO)
    assert close(group_mean_baseline(SCORES, ALL, 3), [0, -1, 1, 1, 1, -2])


def test_rloo_hand_computed():
    # prompt 1: 1 - (0+2)/2 = 0, 0 - (1+2)/2 = -1.5, 2 - (1+0)/2 = 1.5
    # prompt 2: 3 - (3+0)/2 = 1.5 (twice), 0 - (3+3)/2 = -3
    assert close(rloo_scores(SCORES, ALL, 3), [0, -1.5, 1.5, 1.5, 1.5, -3])


def test_dropped_answers_are_left_out_of_the_group():
    # answer 2 of prompt 2 dropped (its placeholder score is NaN): the group is (3, 0)
    scores = SCORES.clone()
    scores[4] = float("nan")
    valid = ALL.clone()
    valid[4] = False
    # mean 1.5, deviations (1.5, -1.5), unbiased var 4.5, std √4.5; RLOO: 3 - 0 = 3, 0 - 3 = -3
    s = math.sqrt(4.5) + 1e-6
    assert close(grpo_scores(scores, valid, 3)[3:], [1.5 / s, 0, -1.5 / s])
    assert close(group_mean_baseline(scores, valid, 3)[3:], [1.5, 0, -1.5])
    assert close(rloo_scores(scores, valid, 3)[3:], [3, 0, -3])
    # one valid answer: no baseline, no spread: 0 everywhere
    lone = torch.tensor([True, False, False, True, True, True])
    for fn in (grpo_scores, group_mean_baseline, rloo_scores):
        assert close(fn(SCORES, lone, 3)[:3], [0, 0, 0])


def test_group_invariances():
    torch.manual_seed(0)
    s = torch.randn(12, dtype=F64)
    valid = torch.ones(12, dtype=torch.bool)
    # GRPO ignores a shift and a positive scale of the scores; RLOO = n/(n-1) × Dr. GRPO
    assert close(grpo_scores(3 * s + 7, valid, 4), grpo_scores(s, valid, 4), atol=1e-5)
    assert close(rloo_scores(s, valid, 4), 4 / 3 * group_mean_baseline(s, valid, 4))
    # each group's centred scores sum to 0
    assert close(group_mean_baseline(s, valid, 4).reshape(3, 4).sum(1), torch.zeros(3))
    with pytest.raises(ValueError, match="group_size: expected a divisor of the 12"):
        grpo_scores(s, valid, 5)


# ----------------------------------------------------------------- returns and the registry


def test_discounted_returns_hand_computed():
    rewards = torch.tensor([[1.0, 2.0, 4.0], [3.0, 5.0, 99.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    # gamma 0.5: row 1: G2 = 4, G1 = 2 + 2 = 4, G0 = 1 + 2 = 3; row 2: G1 = 5, G0 = 3 + 2.5
    assert close(discounted_returns(rewards, mask, 0.5), [[3, 4, 4], [5.5, 5, 0]])


def _example_batch():
    """6 answers of lengths (3, 2, 1, 3, 3, 2), KL reward -0.1 per token."""
    lengths = torch.tensor([3, 2, 1, 3, 3, 2])
    mask = torch.arange(3)[None, :] < lengths[:, None]
    kl_rewards = torch.where(mask, -0.1, 0.0).to(F64)
    return mask, kl_rewards


@pytest.mark.parametrize(
    "name, credited",
    [
        ("grpo", [0, -1 / (1 + 1e-6), 1 / (1 + 1e-6), 1 / (R3 + 1e-6), 1 / (R3 + 1e-6),
                  -2 / (R3 + 1e-6)]),
        ("dr_grpo", [0, -1, 1, 1, 1, -2]),
        ("rloo", [0, -1.5, 1.5, 1.5, 1.5, -3]),
        ("reinforce_pp", [1, 0, 2, 3, 3, 0]),
        ("reinforce_pp_baseline", [0, -1, 1, 1, 1, -2]),
    ],
)  # fmt: skip
def test_critic_free_estimators_hand_computed(name, credited):
    """gamma 1: token t's advantage = the credited score + the KL rewards from t on:
    credited - 0.1 × (tokens left including t)."""
    mask, kl_rewards = _example_batch()
    est = ADVANTAGE_ESTIMATORS[name]
    adv, returns = est.estimate(SCORES, kl_rewards, None, mask, group_size=3, gamma=1.0, lam=0.95)
    lengths = mask.sum(1)
    expected = torch.zeros(6, 3, dtype=F64)
    for i, c in enumerate(credited):
        for t in range(int(lengths[i])):
            expected[i, t] = c - 0.1 * (int(lengths[i]) - t)
    assert returns is None and not est.needs_critic
    assert close(adv, expected)


def test_registry_flags_and_gae_entry():
    assert set(ADVANTAGE_ESTIMATORS) == {
        "gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"
    }  # fmt: skip
    assert [n for n, e in ADVANTAGE_ESTIMATORS.items() if e.needs_critic] == ["gae"]
    assert [n for n, e in ADVANTAGE_ESTIMATORS.items() if e.whiten] == [
        "reinforce_pp", "reinforce_pp_baseline"
    ]  # fmt: skip
    # gae with V = 0, lam = 1 is the reward-to-go
    mask, kl_rewards = _example_batch()
    values = torch.zeros(6, 3, dtype=F64)
    adv, ret = ADVANTAGE_ESTIMATORS["gae"].estimate(
        SCORES, kl_rewards, values, mask, group_size=3, gamma=1.0, lam=1.0
    )
    assert close(adv, discounted_returns(add_final_score(kl_rewards, SCORES, mask), mask))
    assert close(ret, adv)


# ----------------------------------------------------------------- aggregation modes

PER_TOKEN = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), 7.0]], dtype=F64)
AGG_MASK = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)


def test_aggregation_modes_hand_computed():
    # token-mean: (1 + 2 + 3) / 3; seq-mean-token-mean: (1.5 + 3) / 2;
    # seq-mean-token-sum-norm with length 4: (3 + 3) / (2 × 4)
    assert close(aggregate(PER_TOKEN, AGG_MASK), 2.0)
    assert close(aggregate(PER_TOKEN, AGG_MASK, mode="seq-mean-token-mean"), 2.25)
    assert close(
        aggregate(PER_TOKEN, AGG_MASK, mode="seq-mean-token-sum-norm", norm_length=4), 0.75
    )
    # default length T = 3; an all-masked row is not a sequence
    rows = torch.cat([AGG_MASK, torch.zeros(1, 3, dtype=torch.bool)])
    per = torch.cat([PER_TOKEN, torch.ones(1, 3, dtype=F64)])
    assert close(aggregate(per, rows, mode="seq-mean-token-sum-norm"), 1.0)
    with pytest.raises(ValueError, match="unknown loss_agg_mode 'seq-sum'"):
        aggregate(PER_TOKEN, AGG_MASK, mode="seq-sum")


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_aggregation_is_invariant_to_how_rows_are_split(mode):
    """Two shards (processes, micro-batches), each trimmed to its own width, with the global
    counts: the losses and their gradients add up to the whole batch's."""
    torch.manual_seed(1)
    lengths = torch.tensor([5, 1, 3, 4, 2, 2])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    x = torch.randn(6, 6, dtype=F64, requires_grad=True)
    whole = aggregate(x, mask, mode=mode, norm_length=8)
    (g_whole,) = torch.autograd.grad(whole, x)
    tokens, seqs = mask.sum().to(F64), mask.any(1).sum().to(F64)
    parts = []
    for rows in (slice(0, 2), slice(2, 6)):
        width = int(lengths[rows].max())
        parts.append(
            aggregate(x[rows, :width], mask[rows, :width], tokens, mode, seqs, norm_length=8)
        )
    (g_parts,) = torch.autograd.grad(sum(parts), x)
    assert close(sum(parts), whole, atol=1e-12)
    assert close(g_parts, g_whole, atol=1e-12)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_log_ratio_clamp_holds_in_every_mode(mode):
    """A log-ratio of 100 (exp overflows float32) gives a finite loss and gradient in every
    mode, and no gradient through the clamped token."""
    old = torch.zeros(2, 3)
    logp = torch.tensor([[100.0, 0.1, 0.0], [0.0, -0.2, 0.3]], requires_grad=True)
    adv = -torch.ones(2, 3)  # negative: the unclipped branch (ratio × A) is the max
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    loss, _ = policy_loss(logp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28)
    total = aggregate(loss, mask, mode=mode)
    (grad,) = torch.autograd.grad(total, logp)
    assert math.isfinite(float(total.detach())) and bool(torch.isfinite(grad).all())
    assert float(loss[0, 0].detach()) == pytest.approx(math.exp(MAX_LOG_RATIO), rel=1e-5)
    assert float(grad[0, 0]) == 0.0 and float(grad[0, 1]) != 0.0


# ----------------------------------------------------------------- clip-higher and TIS


def test_clip_higher_hand_computed():
    # ratios 1.25 (A = +1) and 0.75 (A = -1)
    logp = torch.log(torch.tensor([[1.25, 0.75]], dtype=F64))
    old = torch.zeros(1, 2, dtype=F64)
    adv = torch.tensor([[1.0, -1.0]], dtype=F64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    # symmetric 0.2: max(-1.25, -1.2) = -1.2; max(0.75, 0.8) = 0.8
    sym, sym_stats = policy_loss(logp, old, adv, mask, clip_eps=0.2)
    assert close(sym, [[-1.2, 0.8]]) and close(sym_stats["clipfrac"], 1.0)
    # clip-higher 0.28: 1.25 < 1.28 stays unclipped; the low side keeps 0.2
    high, high_stats = policy_loss(logp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28)
    assert close(high, [[-1.25, 0.8]]) and close(high_stats["clipfrac"], 0.5)


def test_truncated_is_weights_hand_computed():
    # pi_old / pi_rollout = 0.5, 3 (capped at 2), 1; the fourth token is masked
    old = torch.log(torch.tensor([[0.25, 0.6, 0.5, 0.1]]))
    rollout = torch.log(torch.tensor([[0.5, 0.2, 0.5, 0.9]]))
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    w, stats = truncated_is_weights(old, rollout, mask, cap=2.0)
    assert close(w, [[0.5, 2.0, 1.0, 0.0]], atol=1e-6)
    assert close(stats["tis_weight"], 3.5 / 3, atol=1e-6)
    assert close(stats["tis_capped"], 1 / 3, atol=1e-6)
    assert close(stats["tis_raw_max"], 3.0, atol=1e-5)
    # the weights multiply each token's loss: ratio 1, A = 1 -> loss -w
    loss, _ = policy_loss(old, old, torch.ones(1, 4), mask, is_weights=w)
    assert close(loss, [[-0.5, -2.0, -1.0, 0.0]], atol=1e-6)


# ----------------------------------------------------------------- critic diagnostics


def test_explained_variance_hand_computed():
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]], dtype=F64)
    # V = R: 1; V = mean(R): 0; V = (1, 2, 2): Var(R) = 2/3, R - V = (0, 0, 1) with
    # variance 2/9, so 1 - (2/9) / (2/3) = 2/3
    assert close(explained_variance(returns, returns, mask), 1.0)
    assert close(explained_variance(torch.full((1, 4), 2.0, dtype=F64), returns, mask), 0.0)
    values = torch.tensor([[1.0, 2.0, 2.0, float("nan")]], dtype=F64)
    assert close(explained_variance(values, returns, mask), 2 / 3)
    # two shards with a summing reduce = the whole (here the "other shard" is the same data)
    double = explained_variance(values, returns, mask, reduce=lambda t: 2 * t)
    assert close(double, 2 / 3)
    assert math.isnan(float(explained_variance(values, torch.ones(1, 4, dtype=F64), mask)))
