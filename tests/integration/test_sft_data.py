"""Answer-only SFT labels for the four chat formats, per-category loss sums, the epoch mix."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from align.core.chat_formats import FORMATS, get_chat_format
from align.core.mixture import epoch_composition, initial_mix, largest_remainder
from align.sft.data import (
    IGNORE_INDEX,
    MixtureEpochSampler,
    category_loss_sums,
    encode_sft_example,
    encode_sft_records,
)

MULTI_TURN = [
    {"role": "user", "content": "你好，问个问题"},
    {"role": "assistant", "content": "好的，请问。"},
    {"role": "user", "content": "一年期定期利率多少？"},
    {"role": "assistant", "content": "年利率1.5%。"},
]


@pytest.mark.parametrize("name", list(FORMATS))
def test_labels_are_minus_100_exactly_outside_assistant_spans(world_tokenizer, name):
    fmt = get_chat_format(name)
    ids, labels, cut = encode_sft_example(world_tokenizer, MULTI_TURN, name, max_length=512)
    assert not cut
    # oracle 1: transformers' own {% generation %} mask of the same template
    out = world_tokenizer.apply_chat_template(
        MULTI_TURN,
        chat_template=fmt.resolve(world_tokenizer),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    assert out["input_ids"] == ids
    assert [t if m else IGNORE_INDEX for t, m in zip(ids, out["assistant_masks"])] == labels
    # oracle 2: the supervised tokens spell exactly the replies and their terminators
    text = fmt.render(MULTI_TURN, tokenizer=world_tokenizer)
    spans = fmt.assistant_spans(MULTI_TURN, tokenizer=world_tokenizer)
    supervised = world_tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    assert supervised == "".join(text[a:b] for a, b in spans)
    assert (
        supervised.count("</s>") == 2 and "Human" not in supervised and "<human>" not in supervised
    )


def _answer_only_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The causal-LM loss transformers computes for ``labels`` (shift, ignore −100, mean)."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    return ForCausalLMLoss(logits, labels, vocab_size=logits.shape[-1])


def test_prompt_tokens_cannot_change_the_loss_given_fixed_logits(world_tokenizer):
    other = [{**m, "content": "您好，提个问题"} if k == 0 else m for k, m in enumerate(MULTI_TURN)]
    ids_a, labels_a, _ = encode_sft_example(world_tokenizer, MULTI_TURN, "xuanyuan", 512)
    ids_b, labels_b, _ = encode_sft_example(world_tokenizer, other, "xuanyuan", 512)
    assert ids_a != ids_b and len(ids_a) == len(ids_b)  # same length, different prompt tokens
    assert labels_a == labels_b
    torch.manual_seed(0)
    logits = torch.randn(1, len(ids_a), len(world_tokenizer))
    la, lb = torch.tensor([labels_a]), torch.tensor([labels_b])
    assert _answer_only_loss(logits, la) == _answer_only_loss(logits, lb)
    # logits at positions predicting a prompt token are not read either
    predicts_prompt = torch.tensor(labels_a[1:] + [IGNORE_INDEX]) == IGNORE_INDEX
    noisy = logits.clone()
    noisy[0, predicts_prompt] += 5 * torch.randn_like(noisy[0, predicts_prompt])
    assert _answer_only_loss(noisy, la) == _answer_only_loss(logits, la)
    noisy[0, ~predicts_prompt] += 1.0 * torch.randn_like(noisy[0, ~predicts_prompt])
    assert _answer_only_loss(noisy, la) != _answer_only_loss(logits, la)


def test_collated_labels_are_padded_with_minus_100_not_the_pad_id(world_tokenizer):
    from align.sft.run import CategoryDataCollator

    records = [
        {"messages": MULTI_TURN, "category": "b"},
        {"prompt": "问", "completion": "答。", "category": "a"},
    ]
    data, stats = encode_sft_records(records, world_tokenizer, "hf", 512, ["a", "b"])
    assert stats.kept == 2 and data["category_id"] == [1, 0]
    pad = world_tokenizer.pad_token_id
    batch = CategoryDataCollator(pad_token_id=pad)([data[0], data[1]])
    short = len(data[1]["input_ids"])
    assert batch["input_ids"].shape[1] > short
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][1, short:] == pad).all() and not (batch["labels"] == pad).any()
    assert batch["category_ids"].tolist() == [1, 0]


def test_truncation_leaving_no_answer_drops_and_counts_the_row(world_tokenizer):
    long_prompt = {"prompt": "利率" * 200, "completion": "答。", "category": "a"}
    ok = {"prompt": "问", "completion": "答。", "category": "a"}
    data, stats = encode_sft_records([long_prompt, ok], world_tokenizer, "hf", 64, ["a"])
    assert (stats.rows, stats.kept, stats.truncated, stats.no_supervised_tokens) == (2, 1, 1, 1)
    assert len(data) == 1
    with pytest.raises(ValueError, match="category 'z'"):
        encode_sft_records([{**ok, "category": "z"}], world_tokenizer, "hf", 64, ["a"])


def test_category_loss_sums_by_hand():
    log_probs = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0], [-3.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    sums, counts = category_loss_sums(log_probs, mask, torch.tensor([0, 2, 0]), 3)
    assert sums.tolist() == [1 + 2 + 3 + 1 + 1, 0.0, 0.5]  # masked -9s never count
    assert counts.tolist() == [5, 0, 1]


def test_initial_mix_general_finance_ratio():
    counts = {"chat": 300, "code": 100, "bank": 50, "fund": 150}
    w = initial_mix(counts, ["chat", "code"], general_finance_ratio=4.0)
    # general 4/5 split 3:1, finance 1/5 split 1:3
    assert w == pytest.approx({"chat": 0.6, "code": 0.2, "bank": 0.05, "fund": 0.15})
    assert initial_mix(counts) == pytest.approx(
        {"chat": 0.5, "code": 1 / 6, "bank": 1 / 12, "fund": 0.25}
    )
    assert initial_mix(counts, weights={"chat": 1, "bank": 1}) == {
        "chat": 0.5,
        "code": 0.0,
        "bank": 0.5,
        "fund": 0.0,
    }
    with pytest.raises(ValueError, match="unknown categories"):
        initial_mix(counts, weights={"nope": 1})


def test_epoch_composition_follows_weights_and_cycles_small_categories():
    rows = [0] * 100 + [1] * 10 + [2] * 50
    # 3.5, 2.1, 1.4 -> +1 to the .5
    assert largest_remainder({0: 0.5, 1: 0.3, 2: 0.2}, 7) == {0: 4, 1: 2, 2: 1}
    picked = epoch_composition(rows, [0.5, 0.3, 0.2], 60, seed=1)
    counts = Counter(rows[i] for i in picked)
    assert counts == {0: 30, 1: 18, 2: 12}
    small = [i for i in picked if rows[i] == 1]
    assert set(small) == set(range(100, 110))  # 18 draws of 10 rows: every row, 8 twice
    assert max(Counter(small).values()) == 2
    big = [i for i in picked if rows[i] == 0]
    assert len(set(big)) == 30  # without replacement within a pass


def test_epoch_sampler_is_deterministic_per_epoch_and_follows_new_weights():
    rows = [0] * 50 + [1] * 50
    a = MixtureEpochSampler(rows, [0.5, 0.5], 40, seed=0)
    b = MixtureEpochSampler(rows, [0.5, 0.5], 40, seed=0)
    assert list(a) == list(b) and len(a) == 40
    a.set_epoch(1)
    assert list(a) != list(b)
    a.set_weights([0.9, 0.1])
    assert Counter(rows[i] for i in a) == {0: 36, 1: 4}


@pytest.mark.parametrize("name", ["sft_tiny", "sft_7b_zero3", "sft_70b_zero3"])
def test_sft_configs_parse(name):
    from pathlib import Path

    from align.sft.run import SFTRecipeConfig

    path = Path(__file__).parents[2] / f"recipes/configs/{name}.yaml"
    cfg = SFTRecipeConfig.from_sources(path, ["--bf16", "false"])  # no bf16 training on this CPU
    assert cfg.eval_strategy == "epoch" and not cfg.remove_unused_columns
    assert cfg.chat_format in FORMATS and isinstance(cfg.learning_rate, float)
