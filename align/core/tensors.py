"""Small masked-tensor helpers shared by PPO, the reward models, SFT and pretraining (layer 0:
imports torch only).

Masks are ``[B, T]`` of any dtype (bool, integer or float): a position is valid where the mask
is non-zero. Rows are right-padded, so the valid positions of a row are a prefix of it.

Contents
    last_token_index        index of each row's last valid position
    gather_last             the values at those positions (scores, hidden states)
    token_category_loss_sums  per-category sums and counts of a per-token loss
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gather_last", "last_token_index", "token_category_loss_sums"]


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last valid position of each row of a right-padded (prefix) mask.

    Shapes: ``mask`` [B, T] of any dtype -> [B] long, the number of non-zero positions minus 1,
    clamped at 0 (an empty row gives 0).
    """
    valid = mask if mask.dtype == torch.bool else mask != 0
    return (valid.sum(dim=1) - 1).clamp(min=0)


def gather_last(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` read at the last valid position of each row of a right-padded mask.

    Shapes: ``x`` [B, T, ...] (per-token scores [B, T], hidden states [B, T, H]), ``mask``
    [B, T] of any dtype -> [B, ...]. An empty row reads position 0. Differentiable in ``x``.
    """
    index = last_token_index(mask).to(x.device)
    return x[torch.arange(x.shape[0], device=x.device), index]


def token_category_loss_sums(nll: Tensor, categories: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Per-category sums of a per-token loss and counts of the tokens summed.

    Shapes: ``nll`` [B, T] (any value, NaN included, where not counted), ``categories`` [B, T]
    integers in ``[-1, n)``, -1 = not a loss token -> ``(sums [n], counts [n])`` in ``nll``'s
    dtype and device. ``sums[k] / counts[k]`` is the token-mean loss of category k; sums and
    counts from several batches or processes add up.
    """
    keep = categories.to(nll.device) >= 0
    ids = categories.to(nll.device)[keep].long()
    picked = nll[keep]
    sums = torch.zeros(n, dtype=nll.dtype, device=nll.device).index_add(0, ids, picked)
    counts = torch.zeros(n, dtype=nll.dtype, device=nll.device).index_add(
        0, ids, torch.ones_like(picked)
    )
    return sums, counts
