"""Bucketing (docs/methods.md §5): hand-computed plans and metrics, invariants on random corpora,
the fixed-length baseline's Table-1 pattern, and the bucket batch sampler."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from align.pretrain.bucket_sampler import BucketBatchSampler, global_batch_sizes
from align.pretrain.bucketing import (
    BucketConfig,
    Instance,
    Piece,
    bucket_documents,
    bucket_pool,
    check_plan,
    fixed_length_chunks,
    materialize,
    plan_metrics,
)

# ---------------------------------------------------------------- the 5-document example
LENGTHS = [10, 7, 3, 20, 2]
CFG = BucketConfig(buckets=(8, 16), pad_threshold=0.1, pool_size=100)


def test_five_documents_by_hand():
    plan = bucket_documents(LENGTHS, CFG)
    # doc 3 (20 > 16) is split: a full 16-instance, remainder 16..20 joins the pool.
    # longest 10 -> bucket 16, free 6: best fit 4 (doc 3's rest), then 2 (doc 4): full.
    # longest 7 -> bucket 8, free 1 = 12.5% > 10%: cut 1 token of the shortest (doc 2).
    # doc 2's rest (2 tokens) -> bucket 8, pool empty: 6 pad (the pool's last instance).
    assert plan == [
        Instance(16, (Piece(3, 0, 16),)),
        Instance(16, (Piece(0, 0, 10), Piece(3, 16, 20), Piece(4, 0, 2))),
        Instance(8, (Piece(1, 0, 7), Piece(2, 0, 1))),
        Instance(8, (Piece(2, 1, 3),)),
    ]
    m = plan_metrics(plan, len(LENGTHS))
    assert m.pad_tokens == 6 and m.tokens == 42
    assert m.padding_ratio == 6 / 48  # Σ pad / Σ instance length = 6 / (16+16+8+8)
    assert m.truncation_ratio == 2 / 5  # docs 3 (split) and 2 (cut)
    assert m.concatenation_ratio == 5 / 4  # 5 documents in 4 instances
    assert m.instances_per_bucket == {8: 2, 16: 2}


def test_five_documents_with_a_looser_threshold_pad_instead_of_cut():
    plan = bucket_documents(LENGTHS, BucketConfig(buckets=(8, 16), pad_threshold=0.25))
    # 1 free token of 8 = 12.5% <= 25%: padded, doc 2 stays whole in its own instance
    assert plan[2:] == [Instance(8, (Piece(1, 0, 7),)), Instance(8, (Piece(2, 0, 3),))]
    m = plan_metrics(plan, 5)
    assert (m.pad_tokens, m.truncation_ratio) == (1 + 5, 1 / 5)


def test_fixed_length_baseline_by_hand():
    plan = fixed_length_chunks(LENGTHS, 16)
    # 42 tokens in order: [d0 0..10, d1 0..6] [d1 6..7, d2, d3 0..12] [d3 12..20, d4] + 6 pad
    assert plan == [
        Instance(16, (Piece(0, 0, 10), Piece(1, 0, 6))),
        Instance(16, (Piece(1, 6, 7), Piece(2, 0, 3), Piece(3, 0, 12))),
        Instance(16, (Piece(3, 12, 20), Piece(4, 0, 2))),
    ]
    m = plan_metrics(plan, 5)
    assert (m.padding_ratio, m.truncation_ratio, m.concatenation_ratio) == (6 / 48, 2 / 5, 5 / 3)


def test_materialize_pads_only_at_the_tail():
    docs = [[100 + 10 * d + t for t in range(n)] for d, n in enumerate(LENGTHS)]
    ids, owner = materialize(Instance(16, (Piece(1, 0, 7), Piece(2, 0, 1))), docs, pad_id=0)
    assert ids == docs[1] + docs[2][:1] + [0] * 8
    assert owner == [1] * 7 + [2] + [-1] * 8


# ---------------------------------------------------------------- invariants on random corpora


def _corpus(n: int, seed: int, mean: float = 1000, sigma: float = 1.1) -> list[int]:
    rng = np.random.default_rng(seed)
    mu = np.log(mean) - sigma**2 / 2
    return np.maximum(1, np.rint(rng.lognormal(mu, sigma, n))).astype(int).tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tokens_conserved_in_order_and_instances_are_buckets(seed):
    lengths = _corpus(3000, seed, mean=300)
    cfg = BucketConfig(buckets=(256, 512, 1024, 2048), pad_threshold=0.1, pool_size=700)
    plan = bucket_documents(lengths, cfg)
    check_plan(plan, lengths)
    assert {inst.size for inst in plan} <= set(cfg.buckets)
    rng = random.Random(seed)
    docs = [[rng.randrange(3, 1000) for _ in range(n)] for n in lengths]
    rebuilt: dict[int, list[tuple[int, list[int]]]] = {}
    for inst in plan:
        ids, owner = materialize(inst, docs, pad_id=0)
        assert len(ids) == inst.size
        assert owner[inst.used :] == [-1] * inst.pad and -1 not in owner[: inst.used]
        at = 0
        for piece in inst.pieces:
            rebuilt.setdefault(piece.doc, []).append((piece.start, ids[at : at + piece.length]))
            at += piece.length
    for d, doc in enumerate(docs):
        assert [t for _, part in sorted(rebuilt[d]) for t in part] == doc
    split = {d for d, parts in rebuilt.items() if len(parts) > 1}
    assert plan_metrics(plan, len(lengths)).truncation_ratio == len(split) / len(lengths)


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.2])
def test_padding_within_threshold_except_each_pools_last_instance(threshold):
    lengths = _corpus(800, 7, mean=300)
    cfg = BucketConfig(buckets=(256, 512, 1024, 2048), pad_threshold=threshold)
    plan = bucket_pool(lengths, range(len(lengths)), cfg)
    assert all(inst.pad <= threshold * inst.size for inst in plan[:-1])
    assert plan[-1].pad < plan[-1].size


def test_check_plan_rejects_lost_repeated_or_overflowing_tokens():
    good = bucket_documents(LENGTHS, CFG)
    check_plan(good, LENGTHS)
    lost = [good[0], good[1], good[2]]  # doc 2's rest is missing
    with pytest.raises(ValueError, match="document 2: covers 1 of 3"):
        check_plan(lost, LENGTHS)
    repeated = [*good, Instance(8, (Piece(4, 0, 2),))]
    with pytest.raises(ValueError, match="document 4"):
        check_plan(repeated, LENGTHS)
    with pytest.raises(ValueError, match="in a 8 bucket"):
        check_plan([Instance(8, (Piece(0, 0, 10),))], [10])


def test_bad_config_and_empty_documents_are_errors():
    with pytest.raises(ValueError, match="buckets"):
        BucketConfig(buckets=(0, 8))
    with pytest.raises(ValueError, match="pad_threshold"):
        BucketConfig(pad_threshold=1.0)
    with pytest.raises(ValueError, match="document 1: expected at least one token"):
        bucket_documents([3, 0], CFG)


def test_fixed_baseline_reproduces_the_table_1_pattern_and_buckets_beat_it():
    """Log-normal corpus of mean ~1000 tokens (the bench uses 100k documents; 20k here)."""
    lengths = _corpus(20_000, 0)
    mean = sum(lengths) / len(lengths)
    trunc = {}
    for size in (2048, 4096, 8192, 16384):
        m = plan_metrics(fixed_length_chunks(lengths, size), len(lengths))
        assert m.concatenation_ratio == pytest.approx(size / mean, rel=0.01)
        assert m.padding_ratio < 1e-3  # only the very last instance is padded
        trunc[size] = m.truncation_ratio
    for short, long in ((2048, 4096), (4096, 8192), (8192, 16384)):
        assert 0.45 < trunc[long] / trunc[short] < 0.65  # roughly halves as L doubles
    bucketed = plan_metrics(bucket_documents(lengths), len(lengths))
    assert bucketed.truncation_ratio < 0.01 and bucketed.padding_ratio < 0.01


# ---------------------------------------------------------------- sampler


def _instances():
    return [64] * 40 + [128] * 30 + [256] * 12


def test_each_buckets_share_of_steps_is_its_share_of_batches():
    sampler = BucketBatchSampler(_instances(), tokens_per_step=512, world_size=2, seed=3)
    # global batches: 64 -> 8 instances (40/8 = 5), 128 -> 4 (30//4 = 7, 2 left), 256 -> 2 (6)
    assert sampler.batch_size == {64: 8, 128: 4, 256: 2}
    assert Counter(sampler.step_buckets()) == {64: 5, 128: 7, 256: 6}
    assert len(sampler) == 18 and sampler.dropped == 2


def test_ranks_get_the_same_bucket_disjoint_halves_and_constant_tokens():
    buckets = _instances()
    ranks = [BucketBatchSampler(buckets, 512, world_size=2, rank=r, seed=3) for r in (0, 1)]
    for epoch in (0, 1):
        for s in ranks:
            s.set_epoch(epoch)
        seen = []
        for a, b in zip(*ranks):
            assert {buckets[i] for i in a} == {buckets[i] for i in b}  # one bucket, both ranks
            assert len(a) * buckets[a[0]] == len(b) * buckets[b[0]] == 256  # 512 / 2 ranks
            seen += a + b
        assert len(seen) == len(set(seen)) == len(buckets) - ranks[0].dropped


def test_bucket_of_the_first_step_follows_the_batch_shares():
    sampler = BucketBatchSampler(_instances(), 512, seed=0)
    first = Counter()
    for epoch in range(3000):
        sampler.set_epoch(epoch)
        first[sampler.step_buckets()[0]] += 1
    for bucket, batches in {64: 5, 128: 7, 256: 6}.items():
        assert first[bucket] / 3000 == pytest.approx(batches / 18, abs=0.035)


def test_tokens_per_step_must_divide_into_every_bucket_and_rank():
    assert global_batch_sizes([64, 128], 1024, 4) == {64: 16, 128: 8}
    with pytest.raises(ValueError, match="128 × 4"):
        global_batch_sizes([64, 128], 256, 4)
