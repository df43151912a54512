"""The SFT trainer in process: per-category held-out loss against a plain forward loop, and the
training dataloader drawing each epoch by the category weights."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from align.core.data import write_jsonl


def _records(n_per: int) -> list[dict]:
    rows = []
    for k in range(n_per):
        rows.append(
            {
                "prompt": f"账户{k}冻结怎么办？",
                "completion": f"携带证件{k}到网点。",
                "category": "a",
            }
        )
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"利率{k}是多少？"},
                    {"role": "assistant", "content": f"年利率{k}%。"},
                    {"role": "user", "content": "到期呢？"},
                    {"role": "assistant", "content": "到期自动转存。"},
                ],
                "category": "b",
            }
        )
    return rows


@pytest.fixture(scope="module")
def trainer(tiny_world, world_tokenizer, tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from align.sft.run import SFTRecipeConfig, build_trainer

    tmp = tmp_path_factory.mktemp("sft")
    write_jsonl(_records(12), tmp / "train.jsonl")
    write_jsonl(_records(3), tmp / "held.jsonl")
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(world_tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            pad_token_id=world_tokenizer.pad_token_id,
        )
    )
    model.save_pretrained(tmp / "model")
    world_tokenizer.save_pretrained(tmp / "model")
    cfg = SFTRecipeConfig(
        output_dir=str(tmp / "run"),
        model=str(tmp / "model"),
        train_data=[str(tmp / "train.jsonl")],
        eval_data=str(tmp / "held.jsonl"),
        chat_format="ziya2",
        max_length=128,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=5,
        category_weights={"a": 3, "b": 1},
        epoch_size=16,
        report_to=[],
        use_cpu=True,
    )
    trainer, _ = build_trainer(cfg)
    return trainer


def _reference_losses(trainer) -> dict[str, float]:
    """Token-mean NLL per category with a plain forward per row, no batching, no fused head."""
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    nll = {0: [], 1: []}
    with torch.no_grad():
        for row in trainer.eval_dataset:
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            for t, label in enumerate(labels[1:].tolist()):
                if label != -100:
                    nll[row["category_id"]].append(-logp[t, label].item())
    return {c: sum(nll[k]) / len(nll[k]) for k, c in enumerate(trainer.categories)}


def test_per_category_held_out_loss_matches_a_plain_forward_loop(trainer):
    metrics = trainer.evaluate()
    expected = _reference_losses(trainer)
    for c, value in expected.items():
        assert metrics[f"eval_loss/{c}"] == pytest.approx(value, rel=1e-5)
    n = Counter(trainer.eval_dataset["category_id"])
    assert n == {0: 3, 1: 3}
    # the token mean over both categories lies strictly between them (b has more tokens)
    low, high = sorted(expected.values())
    assert low < metrics["eval_loss_tokens"] < high


def test_each_epoch_draws_rows_by_the_category_weights(trainer):
    loader = trainer.get_train_dataloader()
    for epoch, weights in ((0, [0.75, 0.25]), (1, [0.5, 0.5])):
        trainer.mixture_sampler.set_weights(weights)
        loader.set_epoch(epoch)
        drawn = Counter(k for batch in loader for k in batch["category_ids"].tolist())
        assert drawn == {0: round(16 * weights[0]), 1: round(16 * weights[1])}
        for batch in loader:  # padded labels are -100, never the pad id
            pad = batch["attention_mask"] == 0
            assert (batch["labels"][pad] == -100).all()


def test_resume_from_an_epoch_checkpoint_continues_the_same_run(trainer, tmp_path):
    """Stop after epoch 1, resume from its checkpoint: same mixture, same final weights."""
    from safetensors.torch import load_file

    from align.sft.run import SFTRecipeConfig, run

    base = trainer.args
    common = dict(
        model=base.model,
        train_data=base.train_data,
        eval_data=base.eval_data,
        chat_format="ziya2",
        max_length=128,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=5,
        category_weights={"a": 3, "b": 1},
        epoch_size=16,
        num_train_epochs=2,
        learning_rate=1e-3,
        save_strategy="epoch",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    whole = run(SFTRecipeConfig(output_dir=str(tmp_path / "whole"), **common))
    resumed = run(
        SFTRecipeConfig(
            output_dir=str(tmp_path / "resumed"),
            resume_from=str(tmp_path / "whole" / "checkpoint-4"),  # after epoch 1
            **common,
        )
    )
    assert len(whole["mixture"]["history"]) == 2
    assert resumed["mixture"] == whole["mixture"]
    assert resumed["held_out_before"] == whole["held_out_before"]
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
