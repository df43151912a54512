"""PPO math as pure, typed, tensor-in/tensor-out functions (layer 0: imports torch and
:mod:`align.core.tensors` only).

Conventions: ``B`` = batch, ``T`` = response length, ``V`` = vocabulary. ``mask`` is a bool or
0/1 float tensor ``[B, T]`` marking valid response tokens; responses are right-padded, so each
row is a prefix mask. Every function gives the same result whatever the values at masked
positions (NaN and inf included), and outputs at masked positions are 0 unless stated. No
function here calls ``.item()``, logs, or touches ``torch.distributed``: trainers orchestrate
(statistics over several processes come in through a ``reduce`` callback the trainer supplies).

Log-ratios are clamped to ``[-MAX_LOG_RATIO, MAX_LOG_RATIO]`` (20, as in verl's policy loss and
the k3 estimators of verl and OpenRLHF) before they are exponentiated: ``exp(89)`` is already
``inf`` in float32, and ``0 * inf`` in the backward pass then turns a finite loss into a NaN
gradient. Beyond the bound the clamped value is constant, so its gradient is 0.

Contents
    masked_sum, masked_mean, masked_var, masked_whiten   masked reductions and whitening
    masked_moments                                       mean and variance, over processes too
    kl_k1, kl_k2, kl_k3, KL_ESTIMATORS, kl_penalty       per-token KL estimators
    shape_rewards                                        per-token rewards: -beta*KL + score
    last_token_index                                     (from align.core.tensors)
    gae                                                  generalised advantage estimation
    discounted_returns, add_final_score                  REINFORCE returns of per-token rewards
    grpo_scores, rloo_scores, group_mean_baseline        group-relative scores (GRPO, RLOO)
    ADVANTAGE_ESTIMATORS, AdvantageEstimator             estimators by name (gae, grpo, rloo, ...)
    explained_variance                                   critic diagnostics
    policy_loss, value_loss, aggregate, LOSS_AGG_MODES   clipped PPO losses and their averaging
    truncated_is_weights                                 TIS weights for engine/trainer mismatch
    entropy_from_logits, logprobs_from_logits            float32 log-softmax helpers
    FixedKLController, AdaptiveKLController              KL coefficient schedules
    RunningMoments                                       running mean/std of reward scores

References
    GAE: Schulman et al. 2015, "High-Dimensional Continuous Control Using Generalized Advantage
        Estimation", arXiv 1506.02438.
    Adaptive KL controller: Ziegler et al. 2019, "Fine-Tuning Language Models from Human
        Preferences", arXiv 1909.08593.
    Dual-clip PPO: Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep
        Reinforcement Learning", arXiv 1912.09729.
    k1/k2/k3 KL estimators: J. Schulman, "Approximating KL Divergence" (2020),
        http://joschu.net/blog/kl-approx.html.
    Clipped surrogate and value clipping: Schulman et al. 2017, arXiv 1707.06347; defaults as in
        DeepSpeed-Chat (gamma 1, lambda 0.95, clip 0.2), see docs/methods.md section 1.
    GRPO: Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, section 4.1.2 (outcome supervision).
    Dr. GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective",
        arXiv 2503.20783 (no std division; token sums over a constant length).
    RLOO: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
        Learning from Human Feedback in LLMs", arXiv 2402.14740.
    REINFORCE++: J. Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
        Language Models", arXiv 2501.03262 (and OpenRLHF's ``reinforce`` / ``reinforce_baseline``).
    Clip-higher: Yu et al. 2025, "DAPO", arXiv 2503.14476.
    Truncated importance sampling: Yao et al. 2025, "Your Efficient RL Framework Secretly Brings
        You Off-Policy RL Training" (fengyao.notion.site/off-policy-rl).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from align.core.tensors import last_token_index

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "MAX_LOG_RATIO",
    "AdaptiveKLController",
    "AdvantageEstimator",
    "FixedKLController",
    "RunningMoments",
    "add_final_score",
    "aggregate",
    "discounted_returns",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "group_mean_baseline",
    "grpo_scores",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "last_token_index",
    "logprobs_from_logits",
    "masked_mean",
    "masked_moments",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "rloo_scores",
    "shape_rewards",
    "truncated_is_weights",
    "value_loss",
]

#: Bound on |log-ratio| before ``exp`` (verl's policy loss and verl/OpenRLHF k3 use 20).
MAX_LOG_RATIO = 20.0

#: Sums a tensor over every shard of the data (e.g. an all-reduce across processes); same
#: shape and dtype out as in.
Reduce = Callable[[Tensor], Tensor]

# --------------------------------------------------------------------------- masked reductions


def _valid(mask: Tensor) -> Tensor:
    """Bool view of a bool or 0/1 mask (same shape)."""
    return mask if mask.dtype == torch.bool else mask != 0


def _zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with masked positions set to 0 (NaN/inf there are dropped, gradients stay finite)."""
    return torch.where(_valid(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over valid positions.

    Shapes: ``x`` [B, T] (any shape), ``mask`` broadcastable to ``x``. Returns a scalar when
    ``dim`` is None, else ``x`` with ``dim`` reduced (e.g. [B] for ``dim=1``).
    """
    masked = _zero_masked(x, mask)
    return masked.sum() if dim is None else masked.sum(dim=dim)


def _count(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Number of valid positions (in ``x``'s dtype), reduced like :func:`masked_sum`."""
    ones = torch.ones((), dtype=x.dtype, device=x.device).expand_as(x)
    return masked_sum(ones, mask, dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over valid positions; 0 (not NaN) where no position is valid.

    Shapes: ``x`` [B, T], ``mask`` [B, T]. Returns a scalar (``dim`` None) or [B] (``dim=1``).
    """
    return masked_sum(x, mask, dim) / _count(x, mask, dim).clamp(min=1)


def masked_moments(
    x: Tensor, mask: Tensor, unbiased: bool = True, reduce: Reduce | None = None
) -> tuple[Tensor, Tensor]:
    """Mean and variance of the valid elements of ``x``, of this shard or of all shards.

    Shapes: ``x`` [B, T], ``mask`` [B, T] -> ``(mean, var)``, scalars of ``x``'s dtype. Two
    passes (the variance sums squared deviations from the mean, no ``E[x^2] - E[x]^2``
    cancellation). ``unbiased`` divides by ``n - 1`` (Bessel), the divisor clamped at 1: one
    valid element, or none, gives variance 0; none gives mean 0.

    ``reduce`` (see :data:`Reduce`) makes the moments those of the union of every shard's valid
    elements: it is called on ``[sum, count]`` and then on the sum of squared deviations from
    the global mean, so every shard must call this function at the same point. None = this
    shard alone.
    """
    total, n = masked_sum(x, mask), _count(x, mask)
    if reduce is not None:
        total, n = reduce(torch.stack([total, n])).to(x).unbind()
    mean = total / n.clamp(min=1)
    sq = masked_sum((x - mean) ** 2, mask)
    if reduce is not None:
        sq = reduce(sq).to(x)
    return mean, sq / (n - 1 if unbiased else n).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all valid elements (scalar).

    Shapes: ``x`` [B, T], ``mask`` [B, T] -> scalar. ``unbiased`` divides by ``n - 1`` (Bessel),
    with the divisor clamped at 1, so one valid element gives 0 and none gives 0.
    """
    return masked_moments(x, mask, unbiased)[1]


def masked_whiten(
    x: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    reduce: Reduce | None = None,
) -> Tensor:
    """Whiten ``x`` with the mean and (unbiased) variance of its valid elements.

    Shapes: ``x`` [B, T], ``mask`` [B, T] -> [B, T]. Returns ``(x - mean) / sqrt(var + eps)``,
    plus ``mean`` again when ``shift_mean`` is False (rescale only); 0 at masked positions.
    With ``reduce`` the mean and variance are those of every shard's valid elements (global
    whitening across processes, see :func:`masked_moments`).
    """
    mean, var = masked_moments(x, mask, unbiased=True, reduce=reduce)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_masked(whitened, mask)


# --------------------------------------------------------------------------- KL estimators


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = ``logp - logp_ref``: unbiased for KL(pi || ref) under samples from pi, can be < 0.

    Shapes: [B, T], [B, T] -> [B, T] (elementwise, any shape).
    """
    return logprobs - ref_logprobs


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = ``0.5 * (logp - logp_ref)^2``: biased, low variance, always >= 0.

    Shapes: [B, T], [B, T] -> [B, T] (elementwise, any shape).
    """
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = ``exp(logp_ref - logp) - (logp_ref - logp) - 1``: unbiased, always >= 0.

    Shapes: [B, T], [B, T] -> [B, T] (elementwise, any shape). Uses ``expm1`` so values near
    ``logp == logp_ref`` keep their precision. ``logp_ref - logp`` is clamped to
    ``[-MAX_LOG_RATIO, MAX_LOG_RATIO]`` first, so the value and its gradient stay finite (the
    value is not capped further: verl and OpenRLHF also clamp it to [-10, 10], we do not).
    """
    log_ratio = (ref_logprobs - logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_penalty(
    logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: str = "k1"
) -> Tensor:
    """Per-token KL estimate between the policy and the reference, 0 at masked positions.

    Shapes: ``logprobs`` [B, T], ``ref_logprobs`` [B, T], ``mask`` [B, T] -> [B, T].
    ``estimator`` is a key of :data:`KL_ESTIMATORS`; an unknown name raises ``ValueError``.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"unknown KL estimator {estimator!r}; expected one of {sorted(KL_ESTIMATORS)}"
        )
    logp = _zero_masked(logprobs, mask)
    ref = _zero_masked(ref_logprobs, mask)
    return _zero_masked(KL_ESTIMATORS[estimator](logp, ref), mask)


# --------------------------------------------------------------------------- rewards and GAE


def shape_rewards(
    scores: Tensor,
    kl: Tensor,
    mask: Tensor,
    beta: float | Tensor,
    score_clip: float | None = None,
) -> Tensor:
    """Per-token rewards ``r_t = -beta * kl_t``, plus the sequence score at the last valid token.

    Shapes: ``scores`` [B], ``kl`` [B, T], ``mask`` [B, T], ``beta`` a float, a scalar tensor or
    [B] (one coefficient per row) -> [B, T]. The score is clipped to ``[-score_clip, score_clip]``
    when ``score_clip`` is set. Masked positions are 0; a row with no valid token gets no score.
    """
    beta_t = torch.as_tensor(beta, dtype=kl.dtype, device=kl.device)
    if beta_t.ndim == 1:
        beta_t = beta_t.unsqueeze(-1)
    if score_clip is not None:
        scores = scores.clamp(min=-score_clip, max=score_clip)
    return add_final_score(-beta_t * _zero_masked(kl, mask), scores, mask)


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., arXiv 1506.02438).

    Shapes: ``rewards`` [B, T], ``values`` [B, T], ``mask`` [B, T] -> (advantages [B, T],
    returns [B, T]), returns = advantages + values, both 0 at masked positions.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``,
    with ``V_{t+1} := 0`` and ``A_{t+1} := 0`` after the last valid token. Masked positions are
    skipped rather than treated as episode ends, so for a non-prefix mask ``t + 1`` means the
    next valid position; for the usual prefix mask the two readings agree. Vectorised over B,
    a reverse loop over T; computed in float32 (float64 inputs stay float64).
    """
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    valid = _valid(mask)
    r = _zero_masked(rewards, mask).to(dtype)
    v = _zero_masked(values, mask).to(dtype)
    next_value = torch.zeros(r.shape[0], dtype=dtype, device=r.device)
    next_adv = torch.zeros_like(next_value)
    advantages = []
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        adv_t = delta + gamma * lam * next_adv
        next_adv = torch.where(valid[:, t], adv_t, next_adv)
        next_value = torch.where(valid[:, t], v[:, t], next_value)
        advantages.append(adv_t)
    adv = _zero_masked(torch.stack(advantages[::-1], dim=1), mask)
    return adv, _zero_masked(adv + v, mask)


# --------------------------------------------------------------------------- critic-free estimators


def add_final_score(token_rewards: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
    """``token_rewards`` plus each row's sequence score at its last valid token.

    Shapes: ``token_rewards`` [B, T], ``scores`` [B], ``mask`` [B, T] -> [B, T]; 0 at masked
    positions, and a row with no valid token gets no score.
    """
    index = last_token_index(mask).unsqueeze(-1)
    score = scores.to(token_rewards.dtype).unsqueeze(-1)
    bonus = torch.zeros_like(token_rewards).scatter(1, index, score)
    return _zero_masked(_zero_masked(token_rewards, mask) + bonus, mask)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Reward-to-go ``G_t = r_t + gamma * G_{t+1}`` of per-token rewards (REINFORCE returns).

    Shapes: ``rewards`` [B, T], ``mask`` [B, T] -> [B, T], 0 at masked positions;
    ``G_{t+1} := 0`` after the last valid token. This is :func:`gae` with ``V = 0`` and
    ``lam = 1``, and it is computed that way (float32 or better).
    """
    return gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)[0]


def _groups(scores: Tensor, valid: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """``(scores, valid)`` as ``[G, group_size]`` (float scores 0 where not valid).

    Rows ``g * group_size ... (g + 1) * group_size - 1`` are the answers to prompt ``g``, the
    order :meth:`rollouts.base.RolloutEngine.generate` returns them in.
    """
    if group_size < 1 or scores.shape[0] % group_size:
        raise ValueError(
            f"group_size: expected a divisor of the {scores.shape[0]} scores, got {group_size}"
        )
    dtype = torch.promote_types(scores.dtype, torch.float32)
    ok = valid.reshape(-1, group_size).to(torch.bool)
    s = scores.to(dtype).reshape(-1, group_size)
    return torch.where(ok, s, torch.zeros((), dtype=dtype, device=s.device)), ok


def _group_centred(scores: Tensor, valid: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(score - group mean, valid, n valid)`` of each group, ``[G, n]``, ``[G, n]``, ``[G, 1]``;
    the mean is over the group's valid answers, and the centred score is 0 where not valid."""
    s, ok = _groups(scores, valid, group_size)
    count = ok.sum(dim=1, keepdim=True).to(s.dtype)
    mean = s.sum(dim=1, keepdim=True) / count.clamp(min=1)
    return torch.where(ok, s - mean, torch.zeros((), dtype=s.dtype, device=s.device)), ok, count


def group_mean_baseline(scores: Tensor, valid: Tensor, group_size: int) -> Tensor:
    """Each score minus the mean score of its group: Dr. GRPO's advantage (Liu et al. 2025,
    eq. 3: GRPO without the std division) and REINFORCE++-baseline's shaped score.

    Shapes: ``scores`` [B], ``valid`` [B] bool (False = a dropped answer: left out of the mean,
    output 0), ``group_size`` n dividing B -> [B].
    """
    centred, _, _ = _group_centred(scores, valid, group_size)
    return centred.reshape(-1)


def grpo_scores(scores: Tensor, valid: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """GRPO's outcome advantage ``(r_i - mean(r)) / (std(r) + eps)`` within each group
    (Shao et al. 2024, DeepSeekMath section 4.1.2; verl's ``grpo``, OpenRLHF's ``group_norm``).

    Shapes: ``scores`` [B], ``valid`` [B] bool, ``group_size`` n dividing B -> [B]. ``std`` is
    the unbiased (n - 1) standard deviation of the group's valid answers, as ``torch.std`` in
    verl and OpenRLHF; ``eps`` = 1e-6 as verl. A group whose answers all score the same, or
    with one valid answer, gives 0. Dropped answers are left out and get 0.
    """
    centred, _, count = _group_centred(scores, valid, group_size)
    var = (centred**2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
    return (centred / (var.sqrt() + eps)).reshape(-1)


def rloo_scores(scores: Tensor, valid: Tensor, group_size: int) -> Tensor:
    """RLOO: each score minus the mean of the *other* answers to its prompt (Ahmadian et al.
    2024, eq. 8; OpenRLHF's ``rloo``): ``r_i - (sum_j r_j - r_i) / (n - 1)``.

    Shapes: ``scores`` [B], ``valid`` [B] bool, ``group_size`` n dividing B -> [B]. Only valid
    answers count (n = the group's valid answers); equal to ``n / (n - 1)`` times
    :func:`group_mean_baseline`. A group with one valid answer has no baseline: 0.
    """
    centred, _, count = _group_centred(scores, valid, group_size)
    scale = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.zeros_like(count))
    return (centred * scale).reshape(-1)


#: ``(scores [B], valid [B], group_size) -> [B]``: the score a critic-free estimator credits.
ScoreTransform = Callable[[Tensor, Tensor, int], Tensor]


def _raw_scores(scores: Tensor, valid: Tensor, group_size: int) -> Tensor:
    """REINFORCE++ credits the score itself (the global whitening is its baseline)."""
    return torch.where(valid.to(torch.bool), scores, torch.zeros_like(scores))


def _critic_free(transform: ScoreTransform) -> Callable[..., tuple[Tensor, None]]:
    """An estimator that credits ``transform(scores)`` at the last token, adds the per-token
    KL rewards and returns the reward-to-go (:func:`discounted_returns`) as the advantage."""

    def estimate(scores, kl_rewards, values, mask, *, group_size, gamma, lam):
        valid = _valid(mask).any(dim=1)
        credited = transform(scores, valid, group_size)
        return discounted_returns(add_final_score(kl_rewards, credited, mask), mask, gamma), None

    return estimate


def _gae_estimator(scores, kl_rewards, values, mask, *, group_size, gamma, lam):
    """GAE over ``kl_rewards`` plus the score at the last token, with the critic's values."""
    if values is None:
        raise ValueError("gae needs the critic's values")
    return gae(add_final_score(kl_rewards, scores, mask), values, mask, gamma, lam)


@dataclass(frozen=True)
class AdvantageEstimator:
    """One entry of :data:`ADVANTAGE_ESTIMATORS`.

    ``estimate(scores [B], kl_rewards [B, T], values [B, T] | None, mask [B, T], *, group_size,
    gamma, lam) -> (advantages [B, T], returns [B, T] | None)``: ``kl_rewards`` are the
    per-token rewards without the score (``-beta * KL_t``), ``scores`` the (clipped or
    normalised) sequence scores, ``values`` the critic's (None when ``needs_critic`` is False),
    ``returns`` the value targets (None without a critic). ``whiten``: True = the advantages
    are whitened over the whole batch (every process) by the definition; False = never (the
    group is the baseline); None = as the trainer's ``whiten_advantages`` says. ``grouped``:
    needs the ``group_size`` answers of each prompt side by side (``group_size >= 2``).
    """

    estimate: Callable[..., tuple[Tensor, Tensor | None]]
    needs_critic: bool
    whiten: bool | None
    grouped: bool


#: Advantage estimators by name (``PPOConfig.advantage_estimator``). The critic-free ones
#: credit a transformed score at the last token, add the per-token KL rewards and take the
#: reward-to-go as the advantage, as OpenRLHF 0.11 does for ``rloo``, ``group_norm``,
#: ``dr_grpo``, ``reinforce`` and ``reinforce_baseline``; with ``beta = 0`` and ``gamma = 1``
#: the grouped ones give every token the group-relative score, as verl's outcome advantages.
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "gae": AdvantageEstimator(_gae_estimator, needs_critic=True, whiten=None, grouped=False),
    "grpo": AdvantageEstimator(_critic_free(grpo_scores), False, whiten=False, grouped=True),
    "dr_grpo": AdvantageEstimator(
        _critic_free(group_mean_baseline), False, whiten=False, grouped=True
    ),
    "rloo": AdvantageEstimator(_critic_free(rloo_scores), False, whiten=False, grouped=True),
    "reinforce_pp": AdvantageEstimator(
        _critic_free(_raw_scores), False, whiten=True, grouped=False
    ),
    "reinforce_pp_baseline": AdvantageEstimator(
        _critic_free(group_mean_baseline), False, whiten=True, grouped=True
    ),
}


def explained_variance(
    values: Tensor, returns: Tensor, mask: Tensor, reduce: Reduce | None = None
) -> Tensor:
    """``1 - Var(R - V) / Var(R)`` over valid tokens: 1 = the critic predicts the returns,
    0 = no better than their mean, < 0 = worse. NaN when the returns do not vary.

    Shapes: ``values`` [B, T], ``returns`` [B, T], ``mask`` [B, T] -> scalar (float32 or
    better). Population variances; with ``reduce`` those of every shard (see
    :func:`masked_moments`).
    """
    dtype = torch.promote_types(torch.promote_types(values.dtype, returns.dtype), torch.float32)
    v, r = values.detach().to(dtype), returns.detach().to(dtype)
    var_r = masked_moments(r, mask, unbiased=False, reduce=reduce)[1]
    var_err = masked_moments(r - v, mask, unbiased=False, reduce=reduce)[1]
    nan = torch.full((), float("nan"), dtype=dtype, device=var_r.device)
    return torch.where(var_r > 0, 1 - var_err / torch.where(var_r > 0, var_r, 1), nan)


# --------------------------------------------------------------------------- losses


def _dual_clip(
    loss: Tensor, advantages: Tensor, dual_clip: float, valid: Tensor
) -> tuple[Tensor, Tensor]:
    """Cap the loss of negative-advantage tokens at ``-dual_clip * A``; return (loss, clipfrac)."""
    if dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (Ye et al. 2020), got {dual_clip}")
    cap = -dual_clip * advantages
    negative = advantages < 0
    active = negative & (loss > cap)
    capped = torch.where(negative, torch.minimum(loss, cap), loss)
    return capped, masked_mean(active.to(loss.dtype), valid)


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    dual_clip: float | None = None,
    clip_eps_high: float | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO clipped surrogate loss.

    Shapes: ``logprobs``, ``old_logprobs``, ``advantages``, ``mask`` all [B, T] -> (loss [B, T],
    stats of scalar tensors). ``loss = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps_high))``
    (``eps_high = clip_eps_high``, default ``clip_eps``: a larger one is DAPO's clip-higher,
    Yu et al. 2025) with
    ``ratio = exp(clamp(logp - logp_old, -MAX_LOG_RATIO, MAX_LOG_RATIO))`` (as in verl; without
    the clamp a log-ratio above ~88 overflows float32 and the gradient is NaN while the loss is
    finite); with ``dual_clip = c > 1`` the loss of tokens with ``A < 0`` is further capped at
    ``-c * A`` (Ye et al., arXiv 1912.09729). 0 at masked positions. ``old_logprobs`` and
    ``advantages`` are treated as constants (detached). A token whose log-ratio is beyond the
    bound gets no gradient. ``is_weights`` [B, T] (detached), e.g. :func:`truncated_is_weights`,
    multiply each token's loss after the clipping (Yao et al. 2025).

    Stats (masked means, detached): ``clipfrac`` (share of tokens whose clipped branch is active,
    strictly), ``approxkl`` (``0.5 * mean((logp - logp_old)^2)``), ``ratio`` (mean ratio), and
    ``dual_clipfrac`` (share of tokens capped by the dual clip) when ``dual_clip`` is set; all
    from the clamped log-ratio.
    """
    valid = _valid(mask)
    adv = _zero_masked(advantages.detach(), valid)
    log_ratio = _zero_masked(logprobs - old_logprobs.detach(), valid)
    log_ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    high = clip_eps if clip_eps_high is None else clip_eps_high
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + high)
    loss = torch.maximum(unclipped, clipped)
    stats: dict[str, Tensor] = {}
    if dual_clip is not None:
        loss, stats["dual_clipfrac"] = _dual_clip(loss, adv, dual_clip, valid)
    if is_weights is not None:
        loss = loss * _zero_masked(is_weights.detach(), valid)
    stats["clipfrac"] = masked_mean((clipped > unclipped).to(loss.dtype), valid)
    stats["approxkl"] = 0.5 * masked_mean(log_ratio**2, valid)
    stats["ratio"] = masked_mean(ratio, valid)
    stats = {key: value.detach() for key, value in stats.items()}
    return _zero_masked(loss, valid), stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float | None = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token clipped value loss ``0.5 * max((V - R)^2, (V_clip - R)^2)``.

    Shapes: ``values``, ``old_values``, ``returns``, ``mask`` all [B, T] -> (loss [B, T], stats).
    ``V_clip = V_old + clip(V - V_old, -eps, eps)``; ``clip_eps=None`` gives the plain
    ``0.5 * (V - R)^2``. ``old_values`` and ``returns`` are treated as constants (detached).
    Stats: ``vf_clipfrac`` (scalar, share of valid tokens where the clipped term is larger,
    0 without clipping). 0 at masked positions.
    """
    valid = _valid(mask)
    v = _zero_masked(values, valid)
    ret = _zero_masked(returns.detach(), valid)
    unclipped = (v - ret) ** 2
    if clip_eps is None:
        loss, clip_active = unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        old = _zero_masked(old_values.detach(), valid)
        v_clip = old + (v - old).clamp(-clip_eps, clip_eps)
        clipped = (v_clip - ret) ** 2
        loss, clip_active = torch.maximum(unclipped, clipped), clipped > unclipped
    stats = {"vf_clipfrac": masked_mean(clip_active.to(v.dtype), valid).detach()}
    return _zero_masked(0.5 * loss, valid), stats


#: Loss aggregation modes of :func:`aggregate` (``PPOConfig.loss_agg_mode``).
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    num_tokens: Tensor | float | None = None,
    mode: str = "token-mean",
    num_seqs: Tensor | float | None = None,
    norm_length: float | None = None,
) -> Tensor:
    """Average of a per-token loss, in one of :data:`LOSS_AGG_MODES`.

    Shapes: ``per_token`` [B, T], ``mask`` [B, T] -> scalar.

    - ``token-mean``: ``sum of valid tokens / num_tokens`` (every token weighs the same; long
      answers weigh more).
    - ``seq-mean-token-mean``: ``sum over rows of (row's token mean) / num_seqs`` (every answer
      weighs the same; GRPO as published, eq. 3 of Shao et al. 2024).
    - ``seq-mean-token-sum-norm``: ``sum over rows of (row's token sum) / (num_seqs *
      norm_length)`` with a constant ``norm_length`` (Dr. GRPO, Liu et al. 2025: no length
      bias).

    ``num_tokens`` / ``num_seqs`` default to the valid tokens / rows with a valid token here
    (clamped at 1); pass those of the whole minibatch (all micro-batches, all processes) so that
    summing the micro-batch losses, or accumulating their gradients, equals the loss of the
    minibatch taken at once, whatever the split. ``norm_length`` defaults to ``T``; pass a
    constant (the generation limit), since ``T`` changes with the micro-batch.
    """
    if mode == "token-mean":
        if num_tokens is None:
            num_tokens = _count(per_token, mask).clamp(min=1)
        return masked_sum(per_token, mask) / num_tokens
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {mode!r}; expected one of {LOSS_AGG_MODES}")
    if num_seqs is None:
        num_seqs = _valid(mask).any(dim=1).sum().to(per_token.dtype).clamp(min=1)
    if mode == "seq-mean-token-mean":
        return masked_mean(per_token, mask, dim=1).sum() / num_seqs
    length = per_token.shape[1] if norm_length is None else norm_length
    return masked_sum(per_token, mask, dim=1).sum() / (num_seqs * length)


def truncated_is_weights(
    old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, cap: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Truncated importance-sampling weights ``min(pi_old / pi_rollout, cap)`` per token (Yao et
    al. 2025): corrects the policy gradient for tokens sampled by an engine (vLLM) whose
    probabilities differ from the trainer's ``pi_old`` (kernels, precision, stale weights).

    Shapes: ``old_logprobs`` [B, T] (trainer), ``rollout_logprobs`` [B, T] (the engine's
    sampling logprobs), ``mask`` [B, T] -> (weights [B, T], stats); weights are 0 at masked
    positions and detached. The log-ratio is clamped to ``[-MAX_LOG_RATIO, MAX_LOG_RATIO]``
    before ``exp``. Stats (masked means): ``tis_weight`` (mean weight after the cap),
    ``tis_capped`` (share of tokens at the cap), ``tis_raw_max`` (largest weight before it).
    """
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    valid = _valid(mask)
    log_w = _zero_masked(old_logprobs.detach() - rollout_logprobs.detach(), valid)
    raw = torch.exp(log_w.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    weights = _zero_masked(raw.clamp(max=cap), valid)
    stats = {
        "tis_weight": masked_mean(weights, valid),
        "tis_capped": masked_mean((raw > cap).to(raw.dtype), valid),
        "tis_raw_max": _zero_masked(raw, valid).max() if raw.numel() else raw.new_zeros(()),
    }
    return weights, stats


# --------------------------------------------------------------------------- logits helpers


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` over the last dimension, in float32.

    Shapes: ``logits`` [..., V] -> [...]. Computed as ``-sum(p * log_softmax(l))`` with the
    logsumexp-based ``log_softmax``, so large logits neither overflow nor cancel (the tempting
    ``logsumexp(l) - sum(p * l)`` loses ~1e-3 at logits ~1e4 in float32). ``-inf`` logits
    (filtered tokens) contribute 0.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    finite = logp.clamp(min=torch.finfo(logp.dtype).min)
    return -(logp.exp() * finite).sum(dim=-1)


def _row_logprobs(logits: Tensor, tokens: Tensor, temperature: float) -> Tensor:
    """``log_softmax(logits / temperature)`` at ``tokens``: [..., V], [...] -> [...] float32."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def logprobs_from_logits(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probabilities of ``tokens`` under ``softmax(logits / temperature)``, in float32.

    Shapes: ``logits`` [B, T, V], ``tokens`` [B, T] (long) -> [B, T] float32. Computed as
    ``logits.gather - logsumexp`` without a full log-softmax tensor; half-precision logits are
    upcast one row at a time so peak memory stays near one float32 row. ``temperature`` must be
    > 0 and should match the sampling temperature.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    tokens = tokens.long()
    if logits.dtype in (torch.float32, torch.float64):
        return _row_logprobs(logits, tokens, temperature).float()
    rows = [_row_logprobs(row, row_tokens, temperature) for row, row_tokens in zip(logits, tokens)]
    return torch.stack(rows) if rows else logits.new_zeros(tokens.shape, dtype=torch.float32)


# --------------------------------------------------------------------------- KL controllers


class FixedKLController:
    """A constant KL coefficient ``beta``.

    ``value`` (float) is the coefficient; :meth:`update` does nothing. Same interface as
    :class:`AdaptiveKLController` so trainers can hold either.
    """

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: a fixed coefficient ignores the measured KL."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 (arXiv 1909.08593, section 2.2).

    ``update(current_kl, n_steps)``: ``e = clip(current_kl / target - 1, -0.2, 0.2)`` and
    ``value *= 1 + e * n_steps / horizon``, where ``n_steps`` is the number of samples (or
    steps, consistently with ``horizon``) since the last update.
    """

    def __init__(self, init_kl: float, target: float, horizon: int) -> None:
        if target <= 0:
            raise ValueError(f"target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = int(state.get("horizon", self.horizon))


# --------------------------------------------------------------------------- running moments


class RunningMoments:
    """Running mean and standard deviation of a stream of scores (Welford / Chan et al.).

    Accumulators are float64 0-d tensors on the device of the data (no host sync); ``count`` is
    a Python int (known from shapes). ``update(x)`` merges a batch with Chan's parallel formula,
    ``merge(other)`` merges another shard's moments the same way. ``std`` is the unbiased
    (ddof=1) standard deviation, 1.0 while ``count < 2``.
    """

    def __init__(self) -> None:
        self.count: int = 0
        self._mean = torch.zeros((), dtype=torch.float64)
        self._m2 = torch.zeros((), dtype=torch.float64)

    @classmethod
    def from_stats(cls, mean: float | Tensor, std: float | Tensor, count: int) -> RunningMoments:
        """Moments equivalent to ``count`` scores with this mean and (ddof=1) std, e.g. the
        statistics a reward model stored at the end of its training."""
        moments = cls()
        moments.count = int(count)
        moments._mean = torch.as_tensor(mean, dtype=torch.float64).clone()
        std64 = torch.as_tensor(std, dtype=torch.float64, device=moments._mean.device)
        moments._m2 = std64**2 * max(moments.count - 1, 0)
        return moments

    @property
    def mean(self) -> Tensor:
        """Running mean (float64 scalar; 0 before any update)."""
        return self._mean

    @property
    def var(self) -> Tensor:
        """Unbiased running variance (float64 scalar; 1 while ``count < 2``)."""
        if self.count < 2:
            return torch.ones((), dtype=torch.float64, device=self._mean.device)
        return self._m2 / (self.count - 1)

    @property
    def std(self) -> Tensor:
        """Unbiased running standard deviation (float64 scalar; 1 while ``count < 2``)."""
        return torch.sqrt(self.var)

    def _combine(self, count: int, mean: Tensor, m2: Tensor) -> None:
        """Chan et al.'s pairwise update with another set of (count, mean, M2)."""
        if count == 0:
            return
        self._mean, self._m2 = self._mean.to(mean.device), self._m2.to(mean.device)
        total = self.count + count
        delta = mean - self._mean
        self._mean = self._mean + delta * (count / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    def update(self, x: Tensor) -> None:
        """Add a batch of scores (any shape, flattened). Shapes: ``x`` [N] or [...]."""
        x64 = x.detach().reshape(-1).to(torch.float64)
        if x64.numel() == 0:
            return
        mean = x64.mean()
        self._combine(x64.numel(), mean, ((x64 - mean) ** 2).sum())

    def merge(self, other: RunningMoments) -> RunningMoments:
        """Fold another shard's moments into these (in place); returns ``self``."""
        self._combine(other.count, other._mean, other._m2)
        return self

    def normalize(self, x: Tensor, eps: float = 1e-8) -> Tensor:
        """``(x - mean) / (std + eps)``, same shape and (floating) dtype as ``x``."""
        out = (x.to(torch.float64) - self.mean.to(x.device)) / (self.std.to(x.device) + eps)
        return out.to(x.dtype if x.is_floating_point() else torch.float32)

    def state_dict(self) -> dict[str, Any]:
        """``{"count": int, "mean": Tensor, "m2": Tensor}`` (CPU float64 scalars)."""
        return {"count": self.count, "mean": self._mean.cpu(), "m2": self._m2.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self._mean = torch.as_tensor(state["mean"], dtype=torch.float64).clone()
        self._m2 = torch.as_tensor(state["m2"], dtype=torch.float64).clone()
