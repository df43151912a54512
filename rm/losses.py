"""UFRM losses (docs/methods.md §2) as pure tensor functions (layer 0: torch only).

Shapes: ``N`` preference pairs, ``T`` tokens, ``D`` projection width. Every function computes in
float32 whatever its inputs' dtype, returns a 0-d tensor, and uses no config objects, no
``.item()`` and no distributed calls.

- :func:`bt_loss` ``-mean log σ(r_c - r_r - margin)`` (Bradley–Terry) **[S]**
- :func:`token_bt_loss` the DeepSpeed-Chat token-level BT from the first differing token **[S]**
- :func:`irl_loss` ``-mean[log σ(r_c) + log σ(-r_r)]`` (GAIL/AIRL discriminator) **[S formula]**
- :func:`info_nce_loss` SimCSE InfoNCE between two noisy views **[S form, P representation]**
- :func:`ufrm_loss` ``L_BT + λ_IRL·L_IRL + λ_CL·L_CL`` **[P weights 0.5 / 0.1]**
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "bt_loss",
    "info_nce_loss",
    "irl_loss",
    "mask_lengths",
    "token_bt_loss",
    "ufrm_loss",
]


def bt_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley–Terry loss ``-mean log σ(r_c - r_r - margin)`` over ``[N]`` scores and margins."""
    diff = chosen.float() - rejected.float()
    if margin is not None:
        diff = diff - margin.float()
    return -F.logsigmoid(diff).mean()


def irl_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Discriminator loss ``-mean[log σ(r_c) + log σ(-r_r)]`` over ``[N]`` scores.

    Chosen responses are the expert's, rejected ones the non-expert's: the term pushes chosen
    scores above 0 and rejected scores below it, anchoring the absolute scale.
    """
    return -(F.logsigmoid(chosen.float()) + F.logsigmoid(-rejected.float())).mean()


def mask_lengths(mask: torch.Tensor) -> torch.Tensor:
    """``[N]`` int64 lengths of right-padded ``[N, T]`` masks of any dtype (non-zero = token)."""
    return (mask != 0).sum(1)


def _hold_last(values: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``[N, width]`` values with every position at or past ``lengths`` holding the last value."""
    positions = torch.arange(width, device=values.device)
    index = torch.minimum(positions[None, :], (lengths - 1)[:, None])
    padded = values if values.shape[1] >= width else F.pad(values, (0, width - values.shape[1]))
    return padded.gather(1, index)


def token_bt_loss(
    chosen_values: torch.Tensor,
    rejected_values: torch.Tensor,
    chosen_ids: torch.Tensor,
    rejected_ids: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
) -> torch.Tensor:
    """Token-level BT (DeepSpeed-Chat style) over right-padded ``[N, T]`` per-token values.

    For pair ``i`` let ``d`` be the first position where the two token sequences differ (the
    shorter one counts as different past its end) and ``e`` the later of the two lengths; the
    pair's loss is the mean of ``-log σ(v_c,t - v_r,t)`` over ``t ∈ [d, e)``; the result is the
    mean over pairs. Past its own end a sequence holds its last value (its reward) **[P]**
    where DeepSpeed-Chat reads whatever the model outputs on pad tokens. Identical pairs
    (no differing token) contribute ``log 2`` at their last position.

    The masks may be of any dtype (bool, integer or float): a position counts where the mask is
    non-zero.
    """
    c_len, r_len = mask_lengths(chosen_mask), mask_lengths(rejected_mask)
    width = int(max(chosen_ids.shape[1], rejected_ids.shape[1]))
    positions = torch.arange(width, device=chosen_ids.device)
    c_ids = F.pad(chosen_ids, (0, width - chosen_ids.shape[1]), value=-1)
    r_ids = F.pad(rejected_ids, (0, width - rejected_ids.shape[1]), value=-1)
    c_ids = torch.where(positions[None] < c_len[:, None], c_ids, -1)
    r_ids = torch.where(positions[None] < r_len[:, None], r_ids, -2)
    end = torch.maximum(c_len, r_len)
    differs = c_ids != r_ids
    first = torch.where(differs.any(1), differs.float().argmax(1), end - 1)
    first = torch.minimum(first, end - 1)
    window = (positions[None] >= first[:, None]) & (positions[None] < end[:, None])
    vc = _hold_last(chosen_values.float(), c_len, width)
    vr = _hold_last(rejected_values.float(), r_len, width)
    per_token = -F.logsigmoid(vc - vr) * window
    return (per_token.sum(1) / window.sum(1)).mean()


def info_nce_loss(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCSE InfoNCE over ``M`` responses: ``[M, D]`` first views against ``[M, D]`` second views.

    ``sim(i, j) = cos(a_i, b_j) / τ``; the loss is the cross-entropy of row ``i`` of ``sim`` with
    target ``i``: the positive is the same response's second view, the negatives are the other
    responses' second views. Needs ``M ≥ 2``.
    """
    a = F.normalize(view_a.float(), dim=-1)
    b = F.normalize(view_b.float(), dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return F.cross_entropy(logits, target)


def ufrm_loss(
    bt: torch.Tensor,
    irl: torch.Tensor | None = None,
    cl: torch.Tensor | None = None,
    irl_weight: float = 0.5,
    cl_weight: float = 0.1,
) -> torch.Tensor:
    """``L = L_BT + λ_IRL·L_IRL + λ_CL·L_CL``; a term given as None (or weighted 0) is left out."""
    total = bt.float()
    if irl is not None and irl_weight:
        total = total + irl_weight * irl.float()
    if cl is not None and cl_weight:
        total = total + cl_weight * cl.float()
    return total
