"""Tests for align.core.core_algos: hand-computed values, invariances, and slow loop oracles.

The arithmetic behind every expected number is written next to it. Tolerances are tight
(1e-6 in float32, 1e-9..1e-12 in float64): these tests are meant to fail on a wrong formula.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from align.core.core_algos import (
    KL_ESTIMATORS,
    MAX_LOG_RATIO,
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    aggregate,
    entropy_from_logits,
    gae,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalty,
    last_token_index,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    policy_loss,
    shape_rewards,
    value_loss,
)

F64 = torch.float64


def t64(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def prefix_mask(lengths: list[int], width: int) -> torch.Tensor:
    """Bool [B, T] right-padded mask with the given number of valid tokens per row."""
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def random_prefix_mask(gen: torch.Generator, batch: int, width: int) -> torch.Tensor:
    """Random lengths in [0, T], with an empty and a full row whenever batch >= 2."""
    lengths = torch.randint(0, width + 1, (batch,), generator=gen).tolist()
    if batch >= 2:
        lengths[0], lengths[1] = 0, width
    return prefix_mask(lengths, width)


def scramble(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``x`` with garbage (huge values, inf, NaN) written at the masked positions."""
    junk = torch.randn(x.shape, generator=gen, dtype=x.dtype) * 1e4
    junk.view(-1)[::3] = float("nan")
    junk.view(-1)[1::5] = float("inf")
    return torch.where(mask, x, junk)


# --------------------------------------------------------------------------- masked reductions


def test_masked_reductions_hand_values():
    x = t64([[1.0, 2.0, 3.0, 100.0], [5.0, -50.0, 7.0, 8.0]])
    mask = prefix_mask([3, 1], 4)
    # valid elements: 1, 2, 3 | 5 -> sum 11, n 4, mean 2.75
    assert masked_sum(x, mask).item() == 11.0
    assert masked_sum(x, mask, dim=1).tolist() == [6.0, 5.0]
    assert masked_mean(x, mask).item() == 2.75
    assert masked_mean(x, mask, dim=1).tolist() == [2.0, 5.0]
    # squared deviations from 2.75: 3.0625 + 0.5625 + 0.0625 + 5.0625 = 8.75
    # unbiased 8.75 / 3, biased 8.75 / 4
    assert masked_var(x, mask).item() == pytest.approx(8.75 / 3, abs=1e-12)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(8.75 / 4, abs=1e-12)


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    x = torch.tensor([[float("nan"), 1.0], [2.0, 3.0]])
    mask = torch.zeros(2, 2)
    assert masked_mean(x, mask).item() == 0.0
    assert masked_mean(x, mask, dim=1).tolist() == [0.0, 0.0]
    assert masked_var(x, mask).item() == 0.0


def test_float_mask_equals_bool_mask():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=gen, dtype=F64)
    mask = random_prefix_mask(gen, 4, 6)
    assert torch.equal(masked_whiten(x, mask), masked_whiten(x, mask.float()))
    assert torch.equal(masked_mean(x, mask, 1), masked_mean(x, mask.float(), 1))


def test_whiten_moments_and_shift_mean_false():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 7, generator=gen, dtype=F64) * 3 + 2
    mask = random_prefix_mask(gen, 5, 7)
    w = masked_whiten(x, mask)
    # whitened valid elements: mean 0, unbiased variance var / (var + eps) ~ 1
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-8)
    assert torch.all(w[~mask] == 0)
    kept = masked_whiten(x, mask, shift_mean=False)
    # shift_mean=False rescales only: the mean is kept, the deviations are the whitened ones
    assert masked_mean(kept, mask).item() == pytest.approx(masked_mean(x, mask).item(), abs=1e-12)
    assert torch.allclose(kept[mask] - masked_mean(x, mask), w[mask], atol=1e-12)


@pytest.mark.parametrize(("scale", "shift"), [(1.0, 5.0), (7.5, 0.0), (0.01, -3.0)])
def test_whiten_is_shift_and_positive_scale_invariant(scale, shift):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 9, generator=gen, dtype=F64)
    mask = random_prefix_mask(gen, 6, 9)
    ref = masked_whiten(x, mask, eps=0.0)
    assert torch.allclose(masked_whiten(scale * x + shift, mask, eps=0.0), ref, atol=1e-10)
    # a negative scale flips the sign, so the check above can fail
    assert torch.allclose(masked_whiten(-x, mask, eps=0.0), -ref, atol=1e-10)


# --------------------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_values():
    logp = t64([-1.0, -2.0, -0.5])
    ref = t64([-2.0, -1.0, -0.5])
    # logp - ref = 1, -1, 0
    assert kl_k1(logp, ref).tolist() == [1.0, -1.0, 0.0]
    # 0.5 * (logp - ref)^2 = 0.5, 0.5, 0
    assert kl_k2(logp, ref).tolist() == [0.5, 0.5, 0.0]
    # k3 with u = ref - logp = -1, 1, 0: exp(u) - u - 1 = e^-1 + 1 - 1 = e^-1; e - 1 - 1 = e - 2; 0
    expected = [math.exp(-1.0), math.e - 2.0, 0.0]
    assert kl_k3(logp, ref).tolist() == pytest.approx(expected, abs=1e-12)
    assert {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3} == KL_ESTIMATORS


def test_k3_is_nonnegative_and_close_to_k2_for_small_gaps():
    gen = torch.Generator().manual_seed(3)
    logp = torch.randn(10_000, generator=gen) * 5
    ref = torch.randn(10_000, generator=gen) * 5
    assert torch.all(kl_k3(logp, ref) >= 0)
    # second-order Taylor: exp(u) - u - 1 = u^2 / 2 + u^3 / 6 + ..., so k3 ~ k2 for |u| << 1
    small = ref + 1e-3 * torch.randn(10_000, generator=gen, dtype=torch.float32)
    assert torch.allclose(kl_k3(ref, small), kl_k2(ref, small), rtol=1e-2, atol=1e-10)


def test_k3_clamps_the_log_ratio_so_value_and_gradient_stay_finite():
    logp = torch.tensor([-120.0, -5.0, -2.0], requires_grad=True)
    ref = torch.tensor([-5.0, -120.0, -1.0])
    # u = ref - logp = 115, -115, 1; clamped to 20, -20, 1; k3 = e^u - u - 1
    kl = kl_k3(logp, ref)
    expected = [math.exp(20) - 21, math.exp(-20) + 19, math.e - 2]
    assert kl.tolist() == pytest.approx(expected, rel=1e-6)
    kl.sum().backward()
    # d k3 / d logp = -(e^u - 1) inside the bound, 0 beyond it
    assert logp.grad.tolist() == pytest.approx([0.0, 0.0, -(math.e - 1)], abs=1e-6)
    # k1 and k2 exponentiate nothing: no clamp, the exact values
    assert kl_k2(logp, ref)[0].item() == 0.5 * 115.0**2
    assert kl_k1(logp, ref)[1].item() == 115.0


def test_kl_penalty_masks_and_rejects_unknown_estimator():
    logp = torch.tensor([[-1.0, -1.0, -3.0]])
    ref = torch.tensor([[-2.0, -1.0, 0.0]])
    mask = prefix_mask([2], 3)
    # k1 on the valid tokens: -1 - (-2) = 1, 0; third token masked -> 0
    assert kl_penalty(logp, ref, mask, "k1").tolist() == [[1.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match=r"'k1', 'k2', 'k3'"):
        kl_penalty(logp, ref, mask, "k4")


# --------------------------------------------------------------------------- reward shaping


def test_last_token_index():
    mask = prefix_mask([3, 1, 0, 4], 4)
    # lengths - 1, clamped at 0 for the empty row
    assert last_token_index(mask).tolist() == [2, 0, 0, 3]
    assert last_token_index(mask.float()).dtype == torch.long


def test_shape_rewards_hand_values():
    scores = t64([2.0, -7.0, 3.0])
    kl = t64([[1.0, 2.0, 3.0, 9.0], [0.5, 4.0, 4.0, 4.0], [0.0, 0.0, 0.0, -1.0]])
    mask = prefix_mask([3, 1, 4], 4)
    out = shape_rewards(scores, kl, mask, beta=0.1, score_clip=5.0)
    expected = [
        # -0.1 * [1, 2, 3], score 2 at index 2: -0.3 + 2 = 1.7; masked 0
        [-0.1, -0.2, 1.7, 0.0],
        # -0.1 * 0.5 = -0.05, score clip(-7, +-5) = -5 at index 0: -5.05
        [-5.05, 0.0, 0.0, 0.0],
        # -0.1 * [0, 0, 0, -1] = [0, 0, 0, 0.1], score 3 at index 3: 3.1
        [0.0, 0.0, 0.0, 3.1],
    ]
    assert torch.allclose(out, t64(expected), atol=1e-12)
    unclipped = shape_rewards(scores, kl, mask, beta=0.1)
    assert unclipped[1, 0].item() == pytest.approx(-7.05, abs=1e-12)  # -0.05 - 7


def test_shape_rewards_per_row_beta_and_empty_row():
    scores = t64([1.0, 4.0])
    kl = t64([[1.0, 1.0], [1.0, 1.0]])
    # per-row beta [0.5, 2]; the second row is empty so its score is dropped
    out = shape_rewards(scores, kl, prefix_mask([2, 0], 2), beta=t64([0.5, 2.0]))
    assert out.tolist() == [[-0.5, 0.5], [0.0, 0.0]]  # row 0: -0.5, -0.5 + 1


# --------------------------------------------------------------------------- GAE


def test_gae_hand_computed_example():
    x, y = 123.0, -45.0  # values behind the mask must not matter
    rewards = t64([[0.0, 0.0, 1.0, x]])
    values = t64([[0.5, 0.4, 0.3, y]])
    mask = prefix_mask([3], 4)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # delta_2 = r_2 + V_3 - V_2 = 1 + 0 - 0.3 = 0.7        (V_3 := 0 after the last valid token)
    # delta_1 = 0 + 0.3 - 0.4 = -0.1
    # delta_0 = 0 + 0.4 - 0.5 = -0.1
    # A_2 = 0.7
    # A_1 = -0.1 + 0.95 * 0.7     = 0.565
    # A_0 = -0.1 + 0.95 * 0.565   = 0.43675
    # returns = A + V: 0.93675, 0.965, 1.0; masked position 0
    assert adv[0].tolist() == pytest.approx([0.43675, 0.565, 0.7, 0.0], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0.93675, 0.965, 1.0, 0.0], abs=1e-6)


def test_gae_hand_computed_with_discount():
    rewards = t64([[1.0, 2.0, 5.0, 5.0]])
    values = t64([[1.0, 1.0, 1.0, 1.0]])
    adv, _ = gae(rewards, values, prefix_mask([2], 4), gamma=0.9, lam=0.5)
    # delta_1 = 2 + 0.9 * 0 - 1 = 1;     A_1 = 1
    # delta_0 = 1 + 0.9 * 1 - 1 = 0.9;   A_0 = 0.9 + 0.9 * 0.5 * 1 = 1.35
    assert adv[0].tolist() == pytest.approx([1.35, 1.0, 0.0, 0.0], abs=1e-12)


def slow_gae(rewards, values, mask, gamma, lam):
    """Oracle: per row, per valid token, in plain Python floats (masked tokens skipped)."""
    batch, width = len(rewards), len(rewards[0])
    adv = [[0.0] * width for _ in range(batch)]
    for b in range(batch):
        steps = [t for t in range(width) if mask[b][t]]
        next_value, next_adv = 0.0, 0.0
        for t in reversed(steps):
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            next_adv = delta + gamma * lam * next_adv
            next_value = values[b][t]
            adv[b][t] = next_adv
    ret = [
        [adv[b][t] + values[b][t] if mask[b][t] else 0.0 for t in range(width)]
        for b in range(batch)
    ]
    return adv, ret


@pytest.mark.parametrize(
    ("batch", "width", "gamma", "lam"),
    [(1, 1, 1.0, 0.95), (4, 7, 1.0, 0.95), (8, 16, 0.99, 0.9), (5, 3, 0.5, 0.0), (3, 12, 0.9, 1.0)],
)
def test_gae_matches_slow_oracle_on_prefix_masks(batch, width, gamma, lam):
    gen = torch.Generator().manual_seed(batch * 100 + width)
    rewards = torch.randn(batch, width, generator=gen, dtype=F64)
    values = torch.randn(batch, width, generator=gen, dtype=F64)
    mask = random_prefix_mask(gen, batch, width)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    want_adv, want_ret = slow_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    assert torch.allclose(adv, t64(want_adv), atol=1e-12)
    assert torch.allclose(ret, t64(want_ret), atol=1e-12)


def test_gae_skips_gaps_in_a_non_prefix_mask():
    # documented generalisation: a gap is skipped, i.e. GAE of the compacted row
    gen = torch.Generator().manual_seed(4)
    rewards = torch.randn(6, 10, generator=gen, dtype=F64)
    values = torch.randn(6, 10, generator=gen, dtype=F64)
    mask = torch.rand(6, 10, generator=gen) < 0.6
    adv, _ = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    want, _ = slow_gae(rewards.tolist(), values.tolist(), mask.tolist(), 0.95, 0.9)
    assert torch.allclose(adv, t64(want), atol=1e-12)


def test_gae_low_precision_inputs_compute_in_float32():
    rewards = torch.zeros(2, 3, dtype=torch.bfloat16)
    adv, ret = gae(rewards, rewards, prefix_mask([3, 2], 3))
    assert adv.dtype == torch.float32 and ret.dtype == torch.float32


# --------------------------------------------------------------------------- policy loss


def ratios_to_logprobs(ratios: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs, old_logprobs) in float64 with exp(logp - old) equal to ``ratios``."""
    old = torch.full((len(ratios), len(ratios[0])), -2.0, dtype=F64)
    return old + torch.log(t64(ratios)), old


def test_policy_loss_at_and_beyond_the_clip_boundary():
    logp, old = ratios_to_logprobs([[1.1, 1.2, 1.3], [1.1, 1.2, 1.3]])
    adv = t64([[2.0, 2.0, 2.0], [-2.0, -2.0, -2.0]])
    loss, _ = policy_loss(logp, old, adv, torch.ones(2, 3, dtype=torch.bool), clip_eps=0.2)
    expected = [
        # A = +2: max(-A r, -A clip(r, 0.8, 1.2))
        #   r 1.1: max(-2.2, -2.2) = -2.2;  r 1.2: -2.4;  r 1.3: max(-2.6, -2.4) = -2.4 (clipped)
        [-2.2, -2.4, -2.4],
        # A = -2: r 1.1: 2.2;  r 1.2: 2.4;  r 1.3: max(2.6, 2.4) = 2.6 (pessimistic, not clipped)
        [2.2, 2.4, 2.6],
    ]
    assert torch.allclose(loss, t64(expected), atol=1e-12)


def test_policy_loss_gradient_vanishes_only_where_clipped():
    logp, old = ratios_to_logprobs([[1.1, 1.3], [0.7, 1.3]])
    logp.requires_grad_(True)
    adv = t64([[1.0, 1.0], [-1.0, -1.0]])
    loss, _ = policy_loss(logp, old, adv, torch.ones(2, 2, dtype=torch.bool))
    loss.sum().backward()
    # d(-A r)/dlogp = -A r where unclipped; 0 where the clipped branch is active
    # (A>0, r 1.3) and (A<0, r 0.7) are clipped
    expected = [[-1.1, 0.0], [0.0, 1.3]]
    assert torch.allclose(logp.grad, t64(expected), atol=1e-12)


def test_policy_loss_stats():
    ratios = [[0.7, 1.0, 1.3, 5.0], [0.7, 1.0, 1.3, 5.0]]
    logp, old = ratios_to_logprobs(ratios)
    adv = t64([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])
    mask = prefix_mask([3, 3], 4)  # the ratio-5 tokens are masked out
    _, stats = policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # clipped branch active: (A>0, r 1.3): -1.2 > -1.3; (A<0, r 0.7): 0.8 > 0.7 -> 2 of 6 tokens
    assert stats["clipfrac"].item() == pytest.approx(2 / 6, abs=1e-12)
    # mean ratio over valid tokens: 2 * (0.7 + 1 + 1.3) / 6 = 1
    assert stats["ratio"].item() == pytest.approx(1.0, abs=1e-12)
    # approxkl = 0.5 * mean(log r ^ 2) = 0.5 * (log(0.7)^2 + 0 + log(1.3)^2) / 3
    want = 0.5 * (math.log(0.7) ** 2 + math.log(1.3) ** 2) / 3
    assert stats["approxkl"].item() == pytest.approx(want, abs=1e-12)
    assert "dual_clipfrac" not in stats
    assert all(value.ndim == 0 and not value.requires_grad for value in stats.values())


def test_dual_clip_caps_negative_advantage_losses():
    logp, old = ratios_to_logprobs([[5.0, 2.0, 5.0]])
    adv = t64([[-1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    plain, _ = policy_loss(logp, old, adv, mask)
    loss, stats = policy_loss(logp, old, adv, mask, dual_clip=3.0)
    # A=-1, r 5: max(5, 1.2) = 5 -> min(5, -3 * -1 = 3) = 3 (dual clip active)
    # A=-1, r 2: max(2, 1.2) = 2 -> min(2, 3) = 2
    # A=+1, r 5: max(-5, -1.2) = -1.2, dual clip applies to A < 0 only
    assert torch.allclose(plain, t64([[5.0, 2.0, -1.2]]), atol=1e-12)
    assert torch.allclose(loss, t64([[3.0, 2.0, -1.2]]), atol=1e-12)
    assert stats["dual_clipfrac"].item() == pytest.approx(1 / 3, abs=1e-12)
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(logp, old, adv, mask, dual_clip=1.0)


def test_policy_loss_gradient_is_finite_when_the_log_ratio_overflows_float32():
    """Issue 14's reproducer: logp - old = 115 > 88, where exp overflows float32."""
    logp = torch.tensor([[-5.0, -1.1]], requires_grad=True)
    old = torch.tensor([[-120.0, -1.0]])
    adv = torch.tensor([[1.0, 0.5]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    # without the clamp: the loss is finite (max(-inf, -1.2)) but the gradient is 0 * inf = NaN
    naive = logp.detach().clone().requires_grad_(True)
    ratio = torch.exp(naive - old)
    unclamped = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
    unclamped.backward()
    assert torch.isfinite(unclamped) and torch.isnan(naive.grad[0, 0])

    loss, stats = policy_loss(logp, old, adv, mask)
    total = aggregate(loss, mask)
    total.backward()
    # token 0: log-ratio clamp(115) = 20, ratio e^20, A = 1: max(-e^20, -1.2) = -1.2, a constant
    #          (the clamp is flat there), so its gradient is 0
    # token 1: log-ratio -0.1, ratio r = e^-0.1 = 0.9048 inside [0.8, 1.2], A = 0.5:
    #          loss -0.5 r, d/dlogp = -0.5 r; the token mean halves both
    r = math.exp(-0.1)
    assert total.item() == pytest.approx((-1.2 - 0.5 * r) / 2, abs=1e-6)
    assert torch.isfinite(logp.grad).all()
    assert logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(-0.25 * r, abs=1e-7)
    # the stats see the clamped log-ratio: mean ratio (e^20 + r) / 2, approxkl 0.5 mean(lr^2)
    assert stats["ratio"].item() == pytest.approx((math.exp(20) + r) / 2, rel=1e-6)
    assert stats["approxkl"].item() == pytest.approx(0.5 * (400 + 0.01) / 2, rel=1e-6)


def test_policy_loss_clamps_the_log_ratio_for_negative_advantages_and_dual_clip():
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-116.0, -121.0]])  # log-ratios 115 and 120, both beyond 20
    adv = torch.tensor([[-2.0, -2.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, _ = policy_loss(logp, old, adv, mask)
    # A = -2: the pessimistic unclipped branch -A * e^20 = 2 e^20 (finite, not inf)
    assert loss[0].tolist() == pytest.approx([2 * math.exp(20)] * 2, rel=1e-6)
    capped, _ = policy_loss(logp, old, adv, mask, dual_clip=3.0)
    # dual clip: min(2 e^20, -3 * -2 = 6) = 6
    assert capped[0].tolist() == [6.0, 6.0]
    (loss.sum() + capped.sum()).backward()
    assert logp.grad.tolist() == [[0.0, 0.0]]  # finite; flat beyond the bound
    assert MAX_LOG_RATIO == 20.0


# --------------------------------------------------------------------------- value loss


def test_value_loss_hand_values():
    values = t64([[1.125, 1.5, 0.5]])
    old = t64([[1.0, 1.0, 1.0]])
    returns = t64([[2.0, 2.0, 2.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, stats = value_loss(values, old, returns, mask, clip_eps=0.2)
    # V 1.125: within +-0.2 of 1 -> V_clip = V; 0.5 * 0.875^2 = 0.3828125
    # V 1.5:  V_clip = 1.2; max((1.5-2)^2, (1.2-2)^2) = max(0.25, 0.64); 0.5 * 0.64 = 0.32
    # V 0.5:  V_clip = 0.8; max((0.5-2)^2, (0.8-2)^2) = max(2.25, 1.44); 0.5 * 2.25 = 1.125
    assert torch.allclose(loss, t64([[0.3828125, 0.32, 1.125]]), atol=1e-12)
    assert stats["vf_clipfrac"].item() == pytest.approx(1 / 3, abs=1e-12)
    plain, stats = value_loss(values, old, returns, mask, clip_eps=None)
    # 0.5 * (V - R)^2 = 0.3828125, 0.125, 1.125
    assert torch.allclose(plain, t64([[0.3828125, 0.125, 1.125]]), atol=1e-12)
    assert stats["vf_clipfrac"].item() == 0.0


# --------------------------------------------------------------------------- invariances


def test_masked_positions_change_nothing():
    gen = torch.Generator().manual_seed(5)
    shape = (6, 8)
    mask = random_prefix_mask(gen, *shape)

    def draw():
        return torch.randn(shape, generator=gen, dtype=F64)

    a, b, c, d = draw(), draw(), draw(), draw()
    scores = torch.randn(shape[0], generator=gen, dtype=F64)

    def everything(a, b, c, d):
        out = [masked_whiten(a, mask), masked_whiten(a, mask, shift_mean=False)]
        out += [kl_penalty(a, b, mask, name) for name in KL_ESTIMATORS]
        out.append(shape_rewards(scores, a, mask, beta=0.05, score_clip=1.0))
        out += list(gae(a, b, mask, gamma=0.99, lam=0.9))
        loss, stats = policy_loss(a, b, c, mask, dual_clip=3.0)
        out += [loss, *stats.values()]
        loss, stats = value_loss(a, b, c, mask)
        out += [loss, *stats.values(), aggregate(d, mask), masked_var(d, mask)]
        return out

    clean = everything(a, b, c, d)
    dirty = everything(*(scramble(x, mask, gen) for x in (a, b, c, d)))
    for i, (x, y) in enumerate(zip(clean, dirty)):
        assert torch.equal(x, y), f"output {i} depends on masked positions"
        if x.ndim == 2:
            assert torch.all(x[~mask] == 0), f"output {i} is not 0 at masked positions"


def test_gradients_stay_finite_with_garbage_at_masked_positions():
    gen = torch.Generator().manual_seed(6)
    mask = random_prefix_mask(gen, 4, 5)
    logp = scramble(torch.randn(4, 5, generator=gen), mask, gen).requires_grad_(True)
    old = scramble(torch.randn(4, 5, generator=gen), mask, gen)
    adv = scramble(torch.randn(4, 5, generator=gen), mask, gen)
    loss, _ = policy_loss(logp, old, adv, mask)
    (aggregate(loss, mask) + aggregate(kl_penalty(logp, old, mask, "k3"), mask)).backward()
    assert torch.isfinite(logp.grad).all()
    assert torch.all(logp.grad[~mask] == 0)


def test_micro_batches_with_global_token_count_equal_one_batch():
    gen = torch.Generator().manual_seed(7)
    weights = torch.randn(8, 6, generator=gen, dtype=F64, requires_grad=True)
    mask = random_prefix_mask(gen, 8, 6)

    def per_token(rows):
        return weights[rows] ** 2

    # one batch of 8
    whole = aggregate(per_token(slice(0, 8)), mask)
    (grad_whole,) = torch.autograd.grad(whole, weights)
    # 8 micro-batches of 1, each divided by the global token count, gradients accumulated
    total = mask.sum()
    micro = [aggregate(per_token(slice(i, i + 1)), mask[i : i + 1], total) for i in range(8)]
    (grad_micro,) = torch.autograd.grad(sum(micro), weights)
    assert torch.allclose(sum(micro), whole, atol=1e-12)
    assert torch.allclose(grad_micro, grad_whole, atol=1e-12)
    # the naive mean of per-micro-batch means differs: rows have different lengths
    naive = sum(aggregate(per_token(slice(i, i + 1)), mask[i : i + 1]) for i in range(8)) / 8
    assert not torch.allclose(naive, whole, atol=1e-6)
    # two data-parallel shards of 4 rows: the sum of shard losses is the global mean
    shards = [aggregate(per_token(slice(s, s + 4)), mask[s : s + 4], total) for s in (0, 4)]
    assert torch.allclose(sum(shards), whole, atol=1e-12)


def test_aggregate_default_denominator_is_clamped():
    x = torch.ones(2, 3)
    assert aggregate(x, prefix_mask([2, 1], 3)).item() == 1.0  # 3 / 3
    assert aggregate(x, torch.zeros(2, 3)).item() == 0.0  # 0 / max(0, 1)


# --------------------------------------------------------------------------- KL controllers


def test_adaptive_kl_controller_hand_values():
    ctl = AdaptiveKLController(init_kl=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=9.0, n_steps=256)
    # error = 9 / 6 - 1 = 0.5, clipped to 0.2; 0.1 * (1 + 0.2 * 256 / 10000) = 0.100512
    assert ctl.value == pytest.approx(0.100512, abs=1e-15)
    ctl = AdaptiveKLController(init_kl=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=1.0, n_steps=256)
    # error = 1 / 6 - 1 = -0.833, clipped to -0.2; 0.1 * (1 - 0.2 * 256 / 10000) = 0.099488
    assert ctl.value == pytest.approx(0.099488, abs=1e-15)
    ctl = AdaptiveKLController(init_kl=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=6.6, n_steps=256)
    # error = 6.6 / 6 - 1 = 0.1 (inside the clip); 0.1 * (1 + 0.1 * 256 / 10000) = 0.100256
    assert ctl.value == pytest.approx(0.100256, abs=1e-15)


def test_kl_controllers_state_round_trip_and_validation():
    ctl = AdaptiveKLController(0.2, target=3.0, horizon=500)
    for kl in (1.0, 5.0, 3.3):
        ctl.update(kl, n_steps=64)
    fresh = AdaptiveKLController(1.0, target=1.0, horizon=1)
    fresh.load_state_dict(ctl.state_dict())
    assert fresh.state_dict() == ctl.state_dict()
    fresh.update(4.0, 64)
    ctl.update(4.0, 64)
    assert fresh.value == ctl.value
    for bad in ({"target": 0.0, "horizon": 10}, {"target": 1.0, "horizon": 0}):
        with pytest.raises(ValueError):
            AdaptiveKLController(0.1, **bad)
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05


# --------------------------------------------------------------------------- running moments


def test_running_moments_match_numpy_on_the_concatenated_stream():
    gen = torch.Generator().manual_seed(8)
    batches = [torch.randn(n, generator=gen) * 3 + 10 for n in (1, 7, 64, 3, 200)]
    moments = RunningMoments()
    for batch in batches:
        moments.update(batch)
    stream = torch.cat(batches).double().numpy()
    assert moments.count == stream.size
    assert moments.mean.item() == pytest.approx(np.mean(stream), abs=1e-9)
    assert moments.std.item() == pytest.approx(np.std(stream, ddof=1), abs=1e-9)
    x = torch.tensor([10.0, 13.0])
    want = (x.double().numpy() - np.mean(stream)) / (np.std(stream, ddof=1) + 1e-8)
    assert moments.normalize(x).numpy() == pytest.approx(want, abs=1e-6)
    assert moments.normalize(x).dtype == torch.float32


def test_running_moments_merge_equals_one_stream():
    gen = torch.Generator().manual_seed(9)
    batches = [torch.randn(n, generator=gen, dtype=F64) for n in (5, 11, 2, 30)]
    one = RunningMoments()
    for batch in batches:
        one.update(batch)
    left, right = RunningMoments(), RunningMoments()
    left.update(batches[0])
    left.update(batches[1])
    right.update(batches[2])
    right.update(batches[3])
    merged = left.merge(right)
    assert merged.count == one.count == 48
    assert merged.mean.item() == pytest.approx(one.mean.item(), abs=1e-12)
    assert merged.std.item() == pytest.approx(one.std.item(), abs=1e-12)
    assert RunningMoments().merge(one).std.item() == pytest.approx(one.std.item(), abs=1e-12)


def test_running_moments_defaults_state_and_from_stats():
    moments = RunningMoments()
    assert moments.std.item() == 1.0 and moments.mean.item() == 0.0
    moments.update(torch.tensor([4.0]))
    assert moments.std.item() == 1.0  # one sample: std undefined, reported as 1
    moments.update(torch.tensor([]))  # empty batch: no change
    moments.update(torch.tensor([[6.0, 8.0]]))
    # stream 4, 6, 8: mean 6, var (4 + 0 + 4) / 2 = 4, std 2
    assert (moments.count, moments.mean.item(), moments.std.item()) == (3, 6.0, 2.0)
    restored = RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert (restored.count, restored.mean.item(), restored.std.item()) == (3, 6.0, 2.0)
    stats = RunningMoments.from_stats(mean=6.0, std=2.0, count=3)
    stats.update(torch.tensor([10.0]))
    moments.update(torch.tensor([10.0]))
    assert stats.mean.item() == pytest.approx(moments.mean.item(), abs=1e-12)
    assert stats.std.item() == pytest.approx(moments.std.item(), abs=1e-12)


# --------------------------------------------------------------------------- logits helpers


def test_entropy_from_logits_matches_direct_formula():
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(3, 4, 50, generator=gen) * 4
    p = torch.softmax(logits.double(), dim=-1)
    direct = -(p * p.log()).sum(-1)  # -sum p log p
    ent = entropy_from_logits(logits)
    assert ent.shape == (3, 4) and ent.dtype == torch.float32
    assert torch.allclose(ent.double(), direct, atol=1e-5)
    # uniform over V: log V; half precision input still gives float32
    assert entropy_from_logits(torch.zeros(2, 50, dtype=torch.bfloat16)).tolist() == (
        pytest.approx([math.log(50)] * 2, abs=1e-6)
    )
    # -inf logits (filtered tokens) contribute nothing: uniform over the 3 finite ones, log 3
    filtered = torch.tensor([[0.0, float("-inf"), 0.0, 0.0, float("-inf")]])
    assert entropy_from_logits(filtered).item() == pytest.approx(math.log(3), abs=1e-6)
    # huge logits do not overflow
    assert entropy_from_logits(torch.tensor([[1e4, 1e4]])).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5])
def test_logprobs_from_logits_matches_log_softmax_gather(temperature):
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 5, 40, generator=gen) * 3
    tokens = torch.randint(0, 40, (3, 5), generator=gen)
    direct = torch.log_softmax(logits.double() / temperature, dim=-1)
    direct = direct.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    got = logprobs_from_logits(logits, tokens, temperature=temperature)
    assert got.shape == (3, 5) and got.dtype == torch.float32
    assert torch.allclose(got.double(), direct, atol=1e-5)
    # bf16 logits: same result as upcasting the bf16 values first
    half = logits.bfloat16()
    want = torch.log_softmax(half.double() / temperature, dim=-1)
    want = want.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logprobs_from_logits(half, tokens, temperature).double(), want, atol=1e-5)


def test_logprobs_from_logits_rejects_nonpositive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(torch.zeros(1, 1, 3), torch.zeros(1, 1, dtype=torch.long), 0.0)
