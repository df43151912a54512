"""The shared pieces of issue 15: last-token gather, per-category loss sums, the held-out split
and whitening over several shards (``align.core.tensors``, ``align.core.data``,
``align.core.core_algos.masked_moments``). Expected values are worked out by hand."""

from __future__ import annotations

import math
import threading
from collections import Counter

import pytest
import torch

from align.core import core_algos
from align.core.core_algos import masked_moments, masked_whiten
from align.core.data import split_held_out
from align.core.tensors import gather_last, last_token_index, token_category_loss_sums

MASK_DTYPES = [torch.bool, torch.int64, torch.float32, torch.bfloat16]

# --------------------------------------------------------------------------- last-token gather


@pytest.mark.parametrize("dtype", MASK_DTYPES, ids=str)
def test_gather_last_reads_each_rows_last_valid_position(dtype):
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]).to(dtype)
    scores = torch.tensor([[0.0, 1.0, 2.0, 99.0], [3.0, 98.0, 97.0, 96.0], [4.0, 5.0, 6.0, 7.0]])
    # lengths 3, 1, 4 -> positions 2, 0, 3
    assert gather_last(scores, mask).tolist() == [2.0, 3.0, 7.0]
    hidden = torch.arange(3 * 4 * 2, dtype=torch.float32).reshape(3, 4, 2)
    # [B, T, H]: row b, position t holds (8b + 2t, 8b + 2t + 1)
    assert gather_last(hidden, mask).tolist() == [[4.0, 5.0], [8.0, 9.0], [22.0, 23.0]]


def test_gather_last_gradient_reaches_only_the_gathered_positions_and_empty_rows_read_0():
    scores = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    gather_last(scores, mask).sum().backward()
    assert scores.grad.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]  # empty row: position 0
    assert last_token_index(mask).tolist() == [1, 0]


def test_core_algos_last_token_index_is_the_shared_one():
    assert core_algos.last_token_index is last_token_index


# --------------------------------------------------------------------------- per-category sums


def test_token_category_loss_sums_by_hand_ignores_nan_at_uncounted_positions():
    nll = torch.tensor([[1.0, 2.0, float("nan")], [0.5, float("inf"), 4.0]], dtype=torch.float64)
    cats = torch.tensor([[2, 0, -1], [2, -1, 0]])
    sums, counts = token_category_loss_sums(nll, cats, 4)
    # category 0: 2 + 4; category 2: 1 + 0.5; 1 and 3 unseen
    assert sums.tolist() == [6.0, 0.0, 1.5, 0.0]
    assert counts.tolist() == [2.0, 0.0, 2.0, 0.0]
    assert sums.dtype == counts.dtype == torch.float64


def test_sft_row_categories_go_through_the_shared_sums():
    from align.sft.data import category_loss_sums

    log_probs = torch.tensor([[-1.0, -2.0, float("nan")], [-0.5, -4.0, -8.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # an integer mask; the NaN is unsupervised
    sums, counts = category_loss_sums(log_probs, mask, torch.tensor([1, 0]), 2)
    # row 0 (category 1): 1 + 2; row 1 (category 0): 4 + 8
    assert sums.tolist() == [12.0, 3.0]
    assert counts.tolist() == [2.0, 2.0]


# --------------------------------------------------------------------------- held-out split


def _rows(spec: str) -> list[dict]:
    """``"bba"`` -> rows of categories b, b, a with ids 0, 1, 2."""
    return [{"id": k, "category": c} for k, c in enumerate(spec)]


def test_split_held_out_holds_out_a_share_of_every_category_at_least_one():
    rows = _rows("b" * 10 + "a" * 3 + "c")
    train, held = split_held_out(rows, 0.25, seed=0)
    # b: round(2.5) = 2 (banker's rounding); a: max(1, round(0.75)) = 1; c: its only row
    assert Counter(r["category"] for r in held) == {"b": 2, "a": 1, "c": 1}
    assert Counter(r["category"] for r in train) == {"b": 8, "a": 2}
    assert sorted(r["id"] for r in train + held) == list(range(14))  # a partition
    # grouped by category in sorted order on both sides
    assert [r["category"] for r in train] == ["a"] * 2 + ["b"] * 8
    assert [r["category"] for r in held] == ["a", "b", "b", "c"]


def test_split_held_out_does_not_depend_on_where_categories_first_appear():
    rows = _rows("aaaaabbbbbcccc")
    interleaved = sorted(rows, key=lambda r: (r["id"] % 5, r["id"]))  # c, b, a mixed
    assert [r["category"] for r in interleaved][:3] == ["a", "b", "c"]
    reordered = [r for c in "cba" for r in rows if r["category"] == c]
    first = split_held_out(rows, 0.2, seed=3)
    assert split_held_out(interleaved, 0.2, seed=3) == first
    assert split_held_out(reordered, 0.2, seed=3) == first
    # the seed matters: 20 rows, 4 held out, another seed holds out other rows
    many = _rows("a" * 20)
    assert split_held_out(many, 0.2, seed=3)[1] != split_held_out(many, 0.2, seed=4)[1]


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1])
def test_split_held_out_rejects_a_share_outside_0_1(share):
    with pytest.raises(ValueError, match="share"):
        split_held_out(_rows("aa"), share, seed=0)


# --------------------------------------------------------------------------- global whitening


class TwoShardSum:
    """An all-reduce (sum) between two threads: each call waits for the other shard's."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=30)
        self.parts: list[torch.Tensor | None] = [None, None]
        self.calls = [0, 0]

    def for_shard(self, k: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.calls[k] += 1
            self.parts[k] = t.clone()
            self.barrier.wait()
            total = self.parts[0] + self.parts[1]
            self.barrier.wait()  # nobody overwrites a part before both have read it
            return total

        return reduce


def _on_two_shards(fn, shards):
    """``fn(x, mask, reduce)`` on each shard in its own thread, with one shared reduce."""
    comm, out = TwoShardSum(), [None, None]

    def run(k: int) -> None:
        out[k] = fn(*shards[k], comm.for_shard(k))

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, comm.calls


def _two_shards():
    x_a = torch.tensor([[1.0, 2.0, 3.0], [50.0, 60.0, 70.0]], dtype=torch.float64)
    m_a = torch.tensor([[True, True, True], [False, False, False]])
    x_b = torch.tensor([[5.0, 9.0, -40.0]], dtype=torch.float64)
    m_b = torch.tensor([[True, True, False]])
    return [(x_a, m_a), (x_b, m_b)]


def test_masked_moments_over_two_shards_are_those_of_the_union():
    out, calls = _on_two_shards(
        lambda x, m, reduce: masked_moments(x, m, reduce=reduce), _two_shards()
    )
    # valid elements 1, 2, 3 | 5, 9: mean 20 / 5 = 4; squared deviations 9 + 4 + 1 + 1 + 25 = 40
    # unbiased variance 40 / 4 = 10 (the local mean of either shard would give another value)
    for mean, var in out:
        assert mean.item() == 4.0 and var.item() == 10.0
    assert calls == [2, 2]  # [sum, count], then the squared deviations


def test_global_whitening_equals_whitening_the_concatenated_batch():
    shards = _two_shards()
    out, _ = _on_two_shards(lambda x, m, reduce: masked_whiten(x, m, reduce=reduce), shards)
    scale = 1 / math.sqrt(10 + 1e-8)
    assert out[0][0].tolist() == pytest.approx([-3 * scale, -2 * scale, -1 * scale], abs=1e-12)
    assert out[0][1].tolist() == [0.0, 0.0, 0.0]  # masked row
    assert out[1][0].tolist() == pytest.approx([1 * scale, 5 * scale, 0.0], abs=1e-12)
    whole = masked_whiten(
        torch.cat([shards[0][0], shards[1][0]]), torch.cat([shards[0][1], shards[1][1]])
    )
    assert torch.allclose(torch.cat(out), whole, atol=1e-12)


def test_reduce_none_is_the_local_whitening():
    x, m = _two_shards()[0]
    assert torch.equal(masked_whiten(x, m, reduce=lambda t: t), masked_whiten(x, m))
