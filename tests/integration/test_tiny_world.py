"""The tiny world: generator, rule-based reward, and the built models."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch

from align.core.data import load_records, messages_of
from align.tiny.build import TinyWorldConfig, build_tiny_world
from align.tiny.reward import bigram_f1, content_score, follows_shape, score, tiny_world_reward
from align.tiny.world import (
    CALC,
    CATEGORIES,
    COMPLIANCE,
    GLOSSARY,
    RISK_DISCLOSURE,
    SERVICE,
    fmt_number,
    generate,
)


def test_generator_is_deterministic_and_seeded():
    a, b, c = generate(20, seed=1), generate(20, seed=1), generate(20, seed=2)
    assert a == b
    assert a != c
    assert [i.category for i in a] == [cat for cat in CATEGORIES for _ in range(20)]


def test_every_pair_follows_its_rule():
    """Chosen answers are on shape and score exactly 1; rejected ones score strictly less."""
    for item in generate(100, seed=7):
        assert follows_shape(item.category, item.chosen), item
        assert score(item.category, item.chosen, item.chosen) == 1.0
        assert score(item.category, item.rejected, item.chosen) < 1.0, item
        assert item.messages[-1]["role"] == "user"


def test_computed_answers_are_right():
    checked = 0
    for item in generate(60, seed=3)[:60]:  # the 金融计算 items come first
        assert item.category == CALC
        numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", item.prompt)]
        if "单利" in item.prompt:  # 本金P元，年利率r%，存n年: interest P·r·n/100
            p, r, n = numbers[:3]
            expected = f"{fmt_number(p * r * n / 100)}元"
        elif "复利" in item.prompt:  # 本金P元，年利率r%，n年后: P·(1+r/100)^n
            p, r, n = numbers[:3]
            expected = f"{fmt_number(p * (1 + r / 100) ** n)}元"
        elif "分红" in item.prompt:  # k股 × d元
            k, d = numbers[:2]
            expected = f"{fmt_number(k * d)}元"
        else:
            continue
        assert item.chosen.endswith(f"答案：{expected}。"), item
        checked += 1
    assert checked > 30


def test_bigram_f1_by_hand():
    # "市盈率" bigrams {市盈, 盈率}; "市盈" bigrams {市盈}: overlap 1, P = 1/1, R = 1/2, F1 = 2/3
    assert bigram_f1("市盈", "市盈率") == pytest.approx(2 / 3)
    assert bigram_f1("abc", "abc") == 1.0
    assert bigram_f1("", "abc") == 0.0
    assert bigram_f1("xy", "abc") == 0.0


def test_rule_reward_by_hand():
    ref = "分红=400×0.5=200元。答案：200元。"
    assert score(CALC, "答案：200元。", ref) == pytest.approx(0.25 * 0 + 0.75)  # shape needs work
    assert score(CALC, "分红=200元。答案：200元。", ref) == 1.0
    assert score(CALC, "分红=200元。答案：201元。", ref) == 0.25
    good = "这只私募基金不承诺保本。" + RISK_DISCLOSURE
    assert content_score(COMPLIANCE, "稳赚不赔。" + RISK_DISCLOSURE, good) == -1.0
    assert content_score(COMPLIANCE, "这只私募基金不承诺保本。", good) == 0.0
    assert score(COMPLIANCE, "保证每年10%的收益，请放心购买。", good) == -0.75
    assert (
        score(
            GLOSSARY, "市盈率是指股票价格与每股收益的比率。", "市盈率是指股票价格与每股收益的比率。"
        )
        == 1.0
    )
    assert not follows_shape(SERVICE, "网点九点开门。")


def test_reward_function_uses_trl_convention():
    out = tiny_world_reward(
        prompts=["q", "q"],
        completions=[[{"role": "assistant", "content": "分红=200元。答案：200元。"}], "答案：1元"],
        category=[CALC, CALC],
        reference=["答案：200元。"] * 2,
        trainer_state=None,
    )
    assert out == [1.0, 0.0]


def test_config_rejects_small_heads():
    with pytest.raises(ValueError, match="head_dim >= 32"):
        TinyWorldConfig(hidden_size=64, num_heads=4)


# ---------------------------------------------------------------- the built world


def test_world_files_follow_the_record_contracts(tiny_world):
    counts = tiny_world.manifest["counts"]
    for name, kind in [
        ("sft", "sft"),
        ("prefs", "prefs"),
        ("prompts", "prompts"),
        ("eval_prompts", "prompts"),
        ("eval_prefs", "prefs"),
    ]:
        rows = load_records(tiny_world.data(name), kind)
        assert len(rows) == counts[name]
        assert set(rows["category"]) == set(CATEGORIES)


def test_held_out_prompts_are_unseen_in_training(tiny_world):
    def keys(name):
        rows = [json.loads(line) for line in tiny_world.data(name).open(encoding="utf-8")]
        return {tuple(m["content"] for m in messages_of(r)) for r in rows}

    train = keys("prompts") | keys("prefs")
    sft_rows = [json.loads(line) for line in tiny_world.data("sft").open(encoding="utf-8")]
    train |= {tuple(m["content"] for m in r["messages"][:-1]) for r in sft_rows}
    assert not keys("eval_prompts") & train
    assert not keys("eval_prefs") & train


def test_second_build_finds_the_cache(tiny_world):
    started = time.perf_counter()
    world, built = build_tiny_world(tiny_world.root)
    assert not built and world.root == tiny_world.root
    assert time.perf_counter() - started < 5


def test_build_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a tiny world"):
        build_tiny_world(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_sft_policy_answers_on_format(tiny_world):
    """Measured at build time on held-out prompts with greedy decoding (see the manifest)."""
    before, after = (tiny_world.manifest[k] for k in ("held_out_before_sft", "held_out_after_sft"))
    assert after["n"] == 300
    assert after["on_format"] >= 0.8
    assert after["reward"] > before["reward"] + 0.3


def test_tokenizer_and_models_reload(tiny_world, world_tokenizer):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    tok = world_tokenizer
    text = "本金10000元，年利率3%，风险提示：投资有风险。"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok("</s>", add_special_tokens=False)["input_ids"] == [tok.eos_token_id]
    assert {tok.pad_token, tok.bos_token, tok.eos_token} == {"<pad>", "<s>", "</s>"}
    policy = AutoModelForCausalLM.from_pretrained(tiny_world.policy)
    reward = AutoModelForSequenceClassification.from_pretrained(tiny_world.reward)
    assert reward.config.num_labels == 1
    assert policy.config.hidden_size // policy.config.num_attention_heads >= 32
    for name, tensor in policy.model.state_dict().items():
        assert torch.equal(tensor, reward.model.state_dict()[name]), name


def test_policy_generates_eos_terminated_answers(tiny_world, world_tokenizer):
    from transformers import AutoModelForCausalLM

    from rollouts.base import SamplingParams
    from rollouts.hf_generate import GenerateEngine

    tok = world_tokenizer
    policy = AutoModelForCausalLM.from_pretrained(tiny_world.policy)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "什么是市盈率？"}],
        add_generation_prompt=True,
        return_dict=False,
    )
    batch = GenerateEngine.from_tokenizer(policy, tok).generate(
        [prompt], SamplingParams(max_new_tokens=48, temperature=0)
    )
    assert batch.finish_reasons == ["stop"]
    assert batch.completion_ids[0][-1] == tok.eos_token_id
    answer = tok.decode(batch.completion_ids[0], skip_special_tokens=True)
    assert follows_shape(GLOSSARY, answer)


def test_sft_noise_teaches_only_behaviours_a_rule_can_catch():
    from align.tiny.build import _noise_flags

    items = generate(400, seed=1)
    flags = _noise_flags(items, 0.3, seed=0)
    eligible = [not follows_shape(i.category, i.rejected) for i in items]
    assert not any(f and not e for f, e in zip(flags, eligible))  # wrong facts are never taught
    share = sum(flags) / sum(eligible)
    assert abs(share - 0.3) < 0.05  # binomial sd with ~770 eligible items: 0.017
    assert not any(flags[k] for k, i in enumerate(items) if i.category in (CALC, GLOSSARY))
