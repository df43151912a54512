"""SFT data: answer-only labels, per-category loss sums, and mixture-weighted epochs (METHODS §6).

Labels come from :func:`align.core.chat_formats.encode_with_assistant_mask`: a token is supervised
(label = its id) when it starts inside an assistant span — each reply plus its terminator
(``</s>``) — and is ``-100`` otherwise (system text, user turns, role tags). Padding is added
later by the collator, with ``-100`` in the labels, never the pad id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from datasets import Dataset

from align.core.chat_formats import ChatFormat, encode_with_assistant_mask, get_chat_format

IGNORE_INDEX = -100


def sft_messages(record: Mapping) -> list[dict]:
    """The conversation of an ``sft`` record: ``messages``, or ``prompt`` + ``completion``."""
    if record.get("messages"):
        return [dict(m) for m in record["messages"]]
    return [
        {"role": "user", "content": record["prompt"]},
        {"role": "assistant", "content": record["completion"]},
    ]


def labels_from_mask(input_ids: Sequence[int], mask: Sequence[int]) -> list[int]:
    """``input_ids`` where ``mask`` is 1, ``-100`` elsewhere."""
    if len(input_ids) != len(mask):
        raise ValueError(f"input_ids and mask differ in length: {len(input_ids)} vs {len(mask)}")
    return [t if m else IGNORE_INDEX for t, m in zip(input_ids, mask)]


def encode_sft_example(
    tokenizer, messages: Sequence[dict], chat_format: ChatFormat | str, max_length: int
) -> tuple[list[int], list[int], bool]:
    """``(input_ids, labels, truncated)`` of one conversation, cut to its first ``max_length``
    tokens."""
    ids, mask = encode_with_assistant_mask(tokenizer, messages, chat_format)
    labels = labels_from_mask(ids, mask)
    return ids[:max_length], labels[:max_length], len(ids) > max_length


@dataclass
class SFTEncodeStats:
    """What :func:`encode_sft_records` did: nothing is dropped without a count."""

    rows: int = 0
    kept: int = 0
    truncated: int = 0
    no_supervised_tokens: int = 0

    def as_dict(self) -> dict:
        return dict(vars(self))


def encode_sft_records(
    records: Sequence[Mapping],
    tokenizer,
    chat_format: str,
    max_length: int,
    categories: Sequence[str],
) -> tuple[Dataset, SFTEncodeStats]:
    """``sft`` records → ``{input_ids, labels, category_id}`` (index into ``categories``).

    Rows left without a supervised token after truncation are dropped and counted.
    """
    fmt = get_chat_format(chat_format)
    index = {c: k for k, c in enumerate(categories)}
    stats, rows = SFTEncodeStats(), []
    for record in records:
        stats.rows += 1
        if record["category"] not in index:
            raise ValueError(
                f"category '{record['category']}' is not one of the mixture's {list(categories)}"
            )
        ids, labels, cut = encode_sft_example(tokenizer, sft_messages(record), fmt, max_length)
        stats.truncated += cut
        if all(t == IGNORE_INDEX for t in labels):
            stats.no_supervised_tokens += 1
            continue
        rows.append({"input_ids": ids, "labels": labels, "category_id": index[record["category"]]})
    stats.kept = len(rows)
    if not rows:
        raise ValueError("no SFT rows with a supervised token (all truncated away or none given)")
    return Dataset.from_list(rows), stats


def category_loss_sums(
    log_probs: torch.Tensor, label_mask: torch.Tensor, category_ids: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-category sums of token NLL and counts of supervised tokens.

    Args: ``log_probs`` [B, T] (log-prob of each next-token label, any value where masked),
    ``label_mask`` [B, T] bool, ``category_ids`` [B] in ``[0, n)``.
    Returns ``(nll_sum [n], token_count [n])``; their ratio is the token-mean loss per category.
    """
    mask = label_mask.to(log_probs.dtype)
    row_nll = -(log_probs * mask).sum(-1)
    row_tokens = mask.sum(-1)
    sums = torch.zeros(n, dtype=log_probs.dtype, device=log_probs.device)
    counts = torch.zeros(n, dtype=log_probs.dtype, device=log_probs.device)
    ids = category_ids.to(log_probs.device).long()
    return sums.index_add(0, ids, row_nll), counts.index_add(0, ids, row_tokens)


# --------------------------------------------------------------------------- the mix


def initial_mix(
    counts: Mapping[str, int],
    general_categories: Sequence[str] = (),
    general_finance_ratio: float | None = None,
    weights: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Initial category shares (sum 1).

    ``weights`` given: those, normalised. Else with ``general_finance_ratio`` r (XuanYuan-70B:
    4 [S]): the general categories share r/(r+1) and the others 1/(r+1), each group split in
    proportion to row counts. Else: proportional to row counts.
    """
    if weights:
        unknown = set(weights) - set(counts)
        if unknown:
            raise ValueError(f"category_weights: unknown categories {sorted(unknown)}")
        total = sum(weights.get(c, 0.0) for c in counts)
        if total <= 0 or any(w < 0 for w in weights.values()):
            raise ValueError(f"category_weights: expected >= 0 with a positive sum, got {weights}")
        return {c: weights.get(c, 0.0) / total for c in counts}
    if general_finance_ratio is None:
        total = sum(counts.values())
        return {c: n / total for c, n in counts.items()}
    general = [c for c in counts if c in set(general_categories)]
    finance = [c for c in counts if c not in set(general_categories)]
    if not general or not finance or general_finance_ratio <= 0:
        raise ValueError(
            "general_finance_ratio: expected > 0 with both general_categories and other "
            f"categories present, got ratio {general_finance_ratio}, general {general}"
        )
    shares = {}
    for group, share in ((general, general_finance_ratio), (finance, 1.0)):
        size = sum(counts[c] for c in group)
        for c in group:
            shares[c] = share / (general_finance_ratio + 1) * counts[c] / size
    return shares


def largest_remainder(weights: Sequence[float], total: int) -> list[int]:
    """Integers summing to ``total`` in proportion to ``weights`` (Hamilton's method)."""
    s = sum(weights)
    exact = [w / s * total for w in weights]
    out = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - out[i], reverse=True)
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def epoch_composition(
    row_categories: Sequence[int], weights: Sequence[float], epoch_size: int, seed: int
) -> list[int]:
    """Row indices of one epoch, shuffled: category ``k`` gets its ``weights[k]`` share of
    ``epoch_size`` (largest remainder), drawn without replacement from its rows and cycling
    through them (reshuffled each pass) when the share exceeds them."""
    gen = torch.Generator().manual_seed(seed)
    members: dict[int, list[int]] = {}
    for row, k in enumerate(row_categories):
        members.setdefault(int(k), []).append(row)
    present = [w if k in members else 0.0 for k, w in enumerate(weights)]
    quotas = largest_remainder(present, epoch_size)
    chosen: list[int] = []
    for k, quota in enumerate(quotas):
        rows = members.get(k, [])
        while quota > 0:
            take = min(quota, len(rows))
            perm = torch.randperm(len(rows), generator=gen)[:take].tolist()
            chosen += [rows[i] for i in perm]
            quota -= take
    return [chosen[i] for i in torch.randperm(len(chosen), generator=gen).tolist()]


class MixtureEpochSampler(torch.utils.data.Sampler):
    """A ``Sampler`` whose every epoch follows the current category weights.

    Deterministic in ``(seed, epoch)`` so every rank draws the same indices (the distributed
    wrapper then gives each rank its share); ``set_weights`` between epochs.
    """

    def __init__(
        self, row_categories: Sequence[int], weights: Sequence[float], epoch_size: int, seed: int
    ) -> None:
        self.row_categories = list(row_categories)
        self.epoch_size, self.seed, self.epoch = epoch_size, seed, 0
        self.set_weights(weights)

    def set_weights(self, weights: Sequence[float]) -> None:
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights: expected >= 0 with a positive sum, got {list(weights)}")
        self.weights = list(weights)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        seed = self.seed * 1_000_003 + self.epoch
        return iter(epoch_composition(self.row_categories, self.weights, self.epoch_size, seed))

    def __len__(self) -> int:
        return self.epoch_size


def category_counts(row_categories: Sequence[int], categories: Sequence[str]) -> dict[str, int]:
    counts = Counter(int(k) for k in row_categories)
    return {c: counts.get(k, 0) for k, c in enumerate(categories)}
