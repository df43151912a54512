"""Small masked-tensor helpers shared by PPO, the reward models, SFT and pretraining (layer 0:
imports torch only).

Masks are ``[B, T]`` of any dtype (bool, integer or float): a position is valid where the mask
is non-zero. Rows are right-padded, so the valid positions of a row are a prefix of it.

Contents
    last_token_index        index of each row's last valid position
    gather_last             the values at those positions (scores, hidden states)
    token_category_loss_sums  per-category sums and counts of a per-token loss
    pack_by_token_budget    rows grouped into micro-batches by padded token count
    split_to_count          micro-batches split until there are a given number of them
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "gather_last",
    "last_token_index",
    "pack_by_token_budget",
    "split_to_count",
    "token_category_loss_sums",
]


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


def pack_by_token_budget(
    prompt_lengths: Tensor, completion_lengths: Tensor, budget: int
) -> list[Tensor]:
    """Rows grouped into micro-batches whose padded size stays within ``budget`` tokens.

    Prompts are left-padded and completions right-padded around one boundary, so a micro-batch
    of rows R costs ``|R| × (max_R prompt + max_R completion)`` tokens. Rows are sorted by
    prompt + completion length, longest first (ties keep their order), and packed greedily: a
    row joins the current micro-batch while its padded size stays within ``budget``, else it
    starts the next one. Sorting puts rows of similar length together, so little of each
    micro-batch is padding. A row longer than ``budget`` on its own forms a micro-batch alone.

    Shapes: ``prompt_lengths``, ``completion_lengths`` [N] integers -> micro-batches as [n_k]
    long index tensors on the CPU, a partition of ``range(N)`` (every row exactly once).
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    p, c = prompt_lengths.long().cpu().tolist(), completion_lengths.long().cpu().tolist()
    order = torch.sort(torch.tensor([a + b for a, b in zip(p, c)]), descending=True, stable=True)
    groups: list[list[int]] = []
    widest_p = widest_c = 0
    for i in order.indices.tolist():
        wp, wc = max(widest_p, p[i]), max(widest_c, c[i])
        if groups and (len(groups[-1]) + 1) * (wp + wc) <= budget:
            groups[-1].append(i)
            widest_p, widest_c = wp, wc
        else:
            groups.append([i])
            widest_p, widest_c = p[i], c[i]
    return [torch.tensor(g, dtype=torch.long) for g in groups]


def split_to_count(groups: list[Tensor], count: int) -> list[Tensor]:
    """``groups`` split until there are ``count`` of them: the group with the most rows (the
    first such) is cut in two halves (the larger half first), again and again. Splitting a
    micro-batch never raises its padded size, so a token budget still holds.

    Shapes: [n_k] index tensors -> ``count`` index tensors holding the same rows in the same
    order. ValueError when there are fewer rows than ``count`` or already more groups.
    """
    rows = sum(len(g) for g in groups)
    if not len(groups) <= count <= rows:
        raise ValueError(f"cannot split {len(groups)} groups of {rows} rows into {count}")
    out = list(groups)
    while len(out) < count:
        k = max(range(len(out)), key=lambda j: len(out[j]))
        half = (len(out[k]) + 1) // 2
        out[k : k + 1] = [out[k][:half], out[k][half:]]
    return out
