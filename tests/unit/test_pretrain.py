"""Bucketed continued pretraining: per-token category loss, instance tensors, the global-step
loss normalisation (micro-batching cannot change the update), and `align data bucket`."""

from __future__ import annotations

import json

import pytest
import torch

from align.pretrain.bucketing import Instance, Piece
from align.pretrain.run import (
    BucketPretrainer,
    Corpus,
    PretrainConfig,
    instance_tensors,
    token_category_loss_sums,
)


def test_token_category_loss_sums_by_hand():
    nll = torch.tensor([[1.0, 2.0, 9.0], [0.5, 3.0, 4.0]])
    cats = torch.tensor([[0, 1, -1], [1, 1, 0]])
    sums, counts = token_category_loss_sums(nll, cats, 3)
    assert sums.tolist() == [1.0 + 4.0, 2.0 + 0.5 + 3.0, 0.0]  # the -1 position's 9 is ignored
    assert counts.tolist() == [2, 3, 0]


def test_instance_tensors_label_pad_with_minus_100_and_tag_each_label_with_its_category():
    corpus = Corpus([[5, 6, 7], [8, 9], [10, 11, 12, 13]], [0, 1, 1], ["a", "b"])
    doc_ids = [2, 0, 1]  # positions in the stage's draw -> corpus documents
    inst = Instance(8, (Piece(1, 0, 3), Piece(2, 0, 2)))  # corpus docs 0 and 1, then 3 pads
    out = instance_tensors([inst], corpus, doc_ids, pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert out["labels"].tolist() == [[5, 6, 7, 8, 9, -100, -100, -100]]
    # category of each next-token label (positions 1..7): 6 7 -> a; 8 9 -> b; pads -> -1
    assert out["token_category"].tolist() == [[0, 0, 1, 1, -1, -1, -1]]


def _random_corpus(vocab: int, n_docs: int, seed: int) -> Corpus:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 40, (n_docs,), generator=g).tolist()
    tokens = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
    return Corpus(tokens, [k % 2 for k in range(n_docs)], ["a", "b"])


class _Tok:
    pad_token_id = 0
    eos_token_id = 1


def _trainer(model, corpus: Corpus, tmp_path, **overrides) -> BucketPretrainer:
    values = dict(
        output_dir=str(tmp_path),
        buckets=[32, 64],
        tokens_per_step=256,
        learning_rate=1e-2,
        max_grad_norm=0.0,
        stage_documents=30,
    )
    values.update(overrides)
    return BucketPretrainer(PretrainConfig(**values), model, _Tok(), corpus, corpus)


def test_micro_batching_gives_the_same_update_as_one_pass(random_lm, tmp_path):
    """The loss is normalised by the tokens of the whole global step, so 4 micro-batches of 64
    tokens and one pass of 256 tokens take the same optimizer step (also after a Trainer-based
    test in the same process has left accelerate's global gradient state behind)."""
    import copy

    corpus = _random_corpus(300, 40, seed=1)
    one = _trainer(copy.deepcopy(random_lm).train(), corpus, tmp_path / "one", learning_rate=1.0)
    four = _trainer(
        copy.deepcopy(random_lm).train(),
        corpus,
        tmp_path / "four",
        learning_rate=1.0,
        micro_batch_tokens=64,
    )
    assert (one.accum, four.accum) == (1, 4)
    for t in (one, four):  # plain SGD, lr 1: the update is minus the gradient, nothing else
        t.optimizer.optimizer = torch.optim.SGD(t.model.parameters(), lr=1.0)
    doc_ids, plan = one.stage_plan(0)
    batch = [inst for inst in plan if inst.size == 32][:8]  # 8 × 32 = 256 tokens
    m1, m4 = one.train_step(batch, doc_ids), four.train_step(batch, doc_ids)
    assert m1["loss"] == pytest.approx(m4["loss"], rel=1e-6)
    moved = 0.0
    for p, q, p0 in zip(one.model.parameters(), four.model.parameters(), random_lm.parameters()):
        torch.testing.assert_close(p - p0, q - p0, rtol=1e-4, atol=1e-7)
        moved = max(moved, (p - p0).abs().max().item())
    assert moved > 1e-3  # the step did move the weights
    # per-category losses average back to the step loss, weighted by token counts
    assert set(m1) >= {"loss/a", "loss/b"}


def test_stage_plan_draws_documents_by_the_current_weights(random_lm, tmp_path):
    corpus = _random_corpus(300, 40, seed=2)
    trainer = _trainer(random_lm, corpus, tmp_path, stage_documents=40)
    trainer.controller.weights = {"a": 0.75, "b": 0.25}
    doc_ids, plan = trainer.stage_plan(0)
    assert sum(corpus.category_ids[d] == 0 for d in doc_ids) == 30
    assert sum(inst.used for inst in plan) == sum(len(corpus.tokens[d]) for d in doc_ids)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        PretrainConfig(buckets=[64, 128], micro_batch_tokens=100)
    with pytest.raises(ValueError, match="pad_threshold"):
        PretrainConfig(pad_threshold=2)
    with pytest.raises(ValueError, match="unknown field 'no_such' of PretrainConfig"):
        PretrainConfig.from_sources(None, ["--no_such", "1"])


# ---------------------------------------------------------------- align data bucket


def _bucket(args: list[str], capsys) -> tuple[int, str]:
    """``align data bucket ARGS`` as the console script runs it: (exit status, stderr)."""
    from align.cli.app import main

    with pytest.raises(SystemExit) as done:
        main(["data", "bucket", *args])
    return done.value.code, capsys.readouterr().err


def test_data_bucket_writes_shards_and_metrics(tmp_path, capsys):
    from datasets import Dataset

    from align.core.data import write_jsonl

    docs = [
        {"input_ids": list(range(10 + k, 10 + k + n)), "category": "c"}
        for k, n in enumerate([10, 7, 3, 20, 2])
    ]
    write_jsonl(docs, tmp_path / "docs.jsonl")
    code, err = _bucket(
        [
            "--docs",
            str(tmp_path / "docs.jsonl"),
            "--out",
            str(tmp_path / "out"),
            "--bucketing.buckets",
            "8,16",
            "--bucketing.pad_threshold",
            "0.1",
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # the hand-computed plan of tests/unit/test_bucketing.py: 2 × 16 and 2 × 8 instances
    assert metrics["bucketed"]["padding_ratio"] == 6 / 48
    assert metrics["bucketed"]["truncation_ratio"] == 2 / 5
    assert metrics["fixed"]["16"]["concatenation_ratio"] == 5 / 3
    b8 = Dataset.from_parquet(str(tmp_path / "out" / "bucket-8.parquet"))
    assert b8["input_ids"] == [
        docs[1]["input_ids"] + docs[2]["input_ids"][:1],
        docs[2]["input_ids"][1:] + [0] * 6,
    ]
    assert b8["num_pad"] == [0, 6] and b8["doc_ids"] == [[1, 2], [2]]


def test_data_bucket_user_errors(tmp_path, capsys):
    from align.core.data import write_jsonl

    write_jsonl([{"text": "x"}], tmp_path / "t.jsonl")
    code, err = _bucket(["--docs", str(tmp_path / "t.jsonl"), "--out", "o"], capsys)
    assert code == 2 and "--tokenizer" in err and len(err.splitlines()) == 1
    # the old flat spelling --buckets still works (warned): the item is named
    code, err = _bucket(
        ["--docs", str(tmp_path / "t.jsonl"), "--out", "o", "--buckets", "8,x"], capsys
    )
    assert code == 2 and "error: bucketing.buckets[1]: expected an integer, got 'x'" in err
    write_jsonl([{"body": "x"}], tmp_path / "b.jsonl")
    code, err = _bucket(["--docs", str(tmp_path / "b.jsonl"), "--out", "o"], capsys)
    assert code == 2 and "'text'" in err


@pytest.mark.parametrize("name", ["pretrain_tiny", "pretrain_7b_zero3", "pretrain_70b_zero3"])
def test_pretrain_configs_parse(name):
    from pathlib import Path

    cfg = PretrainConfig.from_sources(Path(__file__).parents[2] / f"recipes/configs/{name}.yaml")
    assert cfg.tokens_per_step % max(cfg.buckets) == 0 and isinstance(cfg.learning_rate, float)
