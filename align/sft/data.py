"""SFT data: answer-only labels, per-category loss sums, and mixture-weighted epochs
(docs/methods.md §6).

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
from align.core.mixture import epoch_composition
from align.core.tensors import token_category_loss_sums

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
    """Per-category sums of token NLL and counts of supervised tokens, one category per row.

    Args: ``log_probs`` [B, T] (log-prob of each next-token label, any value where masked),
    ``label_mask`` [B, T] (bool, or non-zero = supervised), ``category_ids`` [B] in ``[0, n)``.
    Returns ``(nll_sum [n], token_count [n])``; their ratio is the token-mean loss per category.
    Each row's category is spread over its supervised tokens and the sums are those of
    :func:`align.core.tensors.token_category_loss_sums` (shared with pretraining).
    """
    ids = category_ids.to(log_probs.device).long()[:, None]
    supervised = label_mask.to(log_probs.device) != 0
    token_categories = torch.where(supervised, ids, torch.full_like(ids, -1))
    return token_category_loss_sums(-log_probs, token_categories, n)


# --------------------------------------------------------------------------- the mix


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
