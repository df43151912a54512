"""Reward functions: the TRL calling convention, a Python callable and a local reward model."""

from __future__ import annotations

import pytest
import torch

from rm.functions import (
    LocalRewardModel,
    PythonReward,
    RewardFunction,
    as_conversation,
    load_callable,
)
from rm.model import last_token_scores
from tests.helpers import random_reward_model


def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def test_python_reward_passes_columns_and_checks_output():
    seen = {}

    def fn(prompts, completions, category, **kwargs):
        seen["category"] = category
        return [1, None, 2.5]

    reward = PythonReward(fn)
    assert isinstance(reward, RewardFunction)
    assert reward.__name__ == "fn"
    assert reward(["p"] * 3, ["a", "b", "c"], category=["x", "y", "z"]) == [1.0, None, 2.5]
    assert seen["category"] == ["x", "y", "z"]
    with pytest.raises(ValueError, match="returned 1 scores for 2 samples"):
        PythonReward(lambda prompts, completions, **_: [1.0])(["p", "q"], ["a", "b"])
    with pytest.raises(TypeError, match="score 0 is 'high'"):
        PythonReward(lambda prompts, completions, **_: ["high"])(["p"], ["a"])
    with pytest.raises(TypeError, match="score 0 is True"):
        PythonReward(lambda prompts, completions, **_: [True])(["p"], ["a"])


def test_python_reward_from_spec():
    reward = PythonReward("tests.integration.test_reward_functions:length_reward")
    assert reward(["p", "p"], ["ab", "abcd"]) == [2.0, 4.0]
    assert load_callable("align.tiny.reward:tiny_world_reward").__name__ == "tiny_world_reward"
    for bad in ("no_colon", "align.tiny.reward:missing", "not_a_module_xyz:f", ":f"):
        with pytest.raises(ValueError, match="reward function spec"):
            load_callable(bad)


def test_as_conversation_accepts_strings_and_messages():
    assert as_conversation("q", "a") == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    conv = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    assert as_conversation(conv, [{"role": "assistant", "content": "a2"}])[-1]["content"] == "a2"


def test_local_reward_model_scores_the_rendered_conversation_at_its_last_token(world_tokenizer):
    tok = world_tokenizer
    model = random_reward_model(tok, tok.pad_token_id)
    reward = LocalRewardModel(model, tok, chat_format="xuanyuan-6b", batch_size=2)
    prompts = ["什么是市盈率？", "什么是国债？", [{"role": "user", "content": "你好"}]]
    completions = ["市盈率是指股票价格与每股收益的比率。", "不知道", "您好"]
    scores = reward(prompts, completions)
    for p, c, s in zip(prompts, completions, scores):
        text = " Human: {} Assistant: {}</s>".format(
            p if isinstance(p, str) else p[0]["content"], c
        )
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        assert ids[0, -1].item() == tok.eos_token_id
        with torch.no_grad():
            alone = model(input_ids=ids).logits[0, 0].item()  # unpadded: HF pooling is right
        assert s == pytest.approx(alone, abs=1e-5)
    # batch size does not change scores
    one_by_one = LocalRewardModel(model, tok, "xuanyuan-6b", batch_size=1)(prompts, completions)
    assert one_by_one == pytest.approx(scores, abs=1e-5)


def test_scores_read_at_eos_even_when_pad_equals_eos(world_tokenizer):
    """HF's pooling looks for the last token != pad id; with pad == eos it would skip the EOS."""
    tok = world_tokenizer
    model = random_reward_model(tok, pad_token_id=tok.eos_token_id)
    ids = torch.tensor(
        [[10, 11, 12, tok.eos_token_id], [13, 14, tok.eos_token_id, tok.eos_token_id]]
    )
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        ours = last_token_scores(model, ids, mask)
        first = model(input_ids=ids[:1]).logits  # HF pools at position 2 here, not the EOS
        per_token = model.score(model.model(input_ids=ids[:1]).last_hidden_state)[0, :, 0]
    assert ours[0].item() == pytest.approx(per_token[3].item(), abs=1e-5)
    assert first[0, 0].item() == pytest.approx(per_token[2].item(), abs=1e-5)
    assert abs(per_token[3].item() - per_token[2].item()) > 1e-4


def test_left_truncation_keeps_the_end_of_the_answer(world_tokenizer):
    tok = world_tokenizer
    model = random_reward_model(tok, tok.pad_token_id)
    reward = LocalRewardModel(model, tok, "xuanyuan-6b", max_length=8)
    (ids,) = reward.encode(["很长的问题" * 20], ["回答"])
    assert len(ids) == 8 and ids[-1] == tok.eos_token_id


def test_local_reward_model_round_trip_from_disk(tmp_path, world_tokenizer):
    tok = world_tokenizer
    model = random_reward_model(tok, tok.pad_token_id)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = LocalRewardModel.from_pretrained(tmp_path, chat_format="xuanyuan-6b")
    direct = LocalRewardModel(model, tok, "xuanyuan-6b")
    assert loaded(["q"], ["a"]) == pytest.approx(direct(["q"], ["a"]), abs=1e-6)


def test_local_reward_model_rejects_multi_label_heads(world_tokenizer):
    model = random_reward_model(world_tokenizer, world_tokenizer.pad_token_id)
    model.config.num_labels = 2
    with pytest.raises(ValueError, match="num_labels == 1"):
        LocalRewardModel(model, world_tokenizer)
