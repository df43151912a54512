"""Reward sources from config, rules, the bad-score policy, normalisation and weighted sums."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rm.functions import (
    LocalRewardModel,
    WeightedReward,
    check_scores,
    combine_rewards,
    load_callable,
    read_score_stats,
    rewards_from_config,
    score_rewards,
)
from rm.rules import FormatPenalty, LengthPenalty, extract_choice, make_rule, mcq_match
from tests.helpers import random_reward_model


def const(value):
    def fn(prompts, completions, **_):
        return [value] * len(completions)

    return fn


def listed(values):
    def fn(prompts, completions, **_):
        return list(values)

    return fn


# ------------------------------------------------------------------ Python functions from files


def test_python_function_from_a_file_path(tmp_path):
    file = tmp_path / "my_reward.py"
    file.write_text(
        "def shout(prompts, completions, **kw):\n"
        "    return [float(c.count('!')) for c in completions]\n",
        encoding="utf-8",
    )
    (reward,) = rewards_from_config([{"type": "python", "fn": f"{file}:shout", "weight": 2.0}])
    assert reward.name == "shout" and reward.weight == 2.0
    total, parts = combine_rewards([reward], ["p", "p"], ["a!", "b!!!"], {})
    assert parts["shout"].tolist() == [1.0, 3.0]
    assert total.tolist() == [2.0, 6.0]  # weight 2
    with pytest.raises(ValueError, match="no such file"):
        load_callable(f"{tmp_path}/missing.py:shout")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        load_callable(f"{file}:nope")


# ------------------------------------------------------------------ rules


def test_mcq_option_match():
    completions = ["答案：B", "分析……所以答案是 c", "A. 因为", "(AC)", "我不知道", "答案：D"]
    answers = ["B", "C", "A", "CA", "A", None]
    # a lower-case "c" is no option (as in the evaluator, align.core.answers): no reward
    assert mcq_match([""] * 6, completions, answer=answers) == [1.0, 0.0, 1.0, 1.0, 0.0, None]
    assert extract_choice("The answer is D.") == "D"
    assert extract_choice("先说 A，答案：B") == "B"  # the explicit marker wins
    assert extract_choice("Absolutely") is None  # a word starting with A is no choice


def test_length_and_format_penalties():
    length = LengthPenalty(max_chars=5, coef=0.5, min_chars=2)
    # "abcdefg": 2 over the band → -1.0; "a": 1 under → -0.5; "abc": inside → 0
    assert length(["p"] * 3, ["abcdefg", "a", "abc"]) == [-1.0, -0.5, -0.0]
    fmt = FormatPenalty(r"答案：\d+", penalty=2.0)
    assert fmt(["p", "p"], ["答案：42", "42"]) == [0.0, -2.0]
    with pytest.raises(ValueError, match="bad pattern"):
        FormatPenalty("(")
    with pytest.raises(ValueError, match="expected one of"):
        make_rule("nope")
    with pytest.raises(ValueError, match="bad options"):
        make_rule("mcq", coef=1.0)


def test_rule_config_and_tiny_rule_match_the_tiny_world_reward():
    from align.tiny.reward import tiny_world_reward

    rewards = rewards_from_config(
        [
            {"type": "rule", "rule": "tiny", "name": "tiny"},
            {"type": "rule", "rule": "length", "max_chars": 4, "coef": 0.1, "weight": 0.5},
        ]
    )
    cols = {"category": ["金融计算", "金融计算"], "reference": ["答案：12", "答案：12"]}
    completions = ["答案：12", "答案：13 多说几句"]
    out = score_rewards(rewards, ["p", "p"], completions, cols)
    expected_tiny = tiny_world_reward(["p", "p"], completions, **cols)
    assert out.parts["tiny"].tolist() == pytest.approx(expected_tiny)
    # length: "答案：12" is 5 chars → -0.1; "答案：13 多说几句" is 10 → -0.6; weight 0.5
    assert out.parts["length_penalty"].tolist() == pytest.approx([-0.1, -0.6])
    assert out.total.tolist() == pytest.approx(
        [expected_tiny[0] - 0.05, expected_tiny[1] - 0.3], abs=1e-6
    )


# ------------------------------------------------------------------ the bad-score policy


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_invalid_scores_are_errors_naming_the_source_by_default(bad):
    reward = WeightedReward("judge", listed([1.0, bad, 2.0]), 1.0)
    with pytest.raises(ValueError, match=r"'judge' returned None/NaN/inf for samples \[1\]"):
        combine_rewards([reward], ["p"] * 3, ["a", "b", "c"], {})


def test_wrong_count_and_non_numbers_are_always_errors():
    for policy in ("error", "drop"):
        with pytest.raises(ValueError, match="'judge' returned 2 scores for 3 samples"):
            check_scores("judge", [1.0, 2.0], 3, policy)
        with pytest.raises(TypeError, match="'judge': score 0 is 'x'"):
            check_scores("judge", ["x"], 1, policy)
    import numpy as np

    # tensors, arrays and numpy scalars are numbers too
    for raw in (torch.tensor([1.0, 2.0]), np.array([1.0, 2.0]), [np.float32(1), 2]):
        assert check_scores("judge", raw, 2)[0].tolist() == [1.0, 2.0]
    with pytest.raises(TypeError, match="returned str"):
        check_scores("judge", "1", 1)
    with pytest.raises(ValueError, match="on_invalid"):
        WeightedReward("judge", const(1.0), 1.0, on_invalid="ignore")


def test_drop_policy_drops_and_counts_across_components():
    a = WeightedReward("a", listed([1.0, None, 3.0, 4.0]), 1.0, on_invalid="drop")
    b = WeightedReward("b", listed([10.0, 20.0, math.nan, 40.0]), 0.1, on_invalid="drop")
    out = score_rewards([a, b], ["p"] * 4, ["w", "x", "y", "z"], {})
    assert out.kept.tolist() == [True, False, False, True]
    assert out.dropped == {"a": 1, "b": 1}
    # kept: 1 + 0.1·10 = 2, 4 + 0.1·40 = 8; dropped samples score 0
    assert out.total.tolist() == pytest.approx([2.0, 0.0, 0.0, 8.0])


# ------------------------------------------------------------------ normalisation


def test_normalise_then_sum_and_sum_then_normalise():
    a = WeightedReward("a", listed([1.0, 2.0, 3.0]), 1.0)
    b = WeightedReward("b", listed([100.0, 100.0, 400.0]), 2.0)
    args = (["p"] * 3, ["x", "y", "z"], {})
    plain = score_rewards([a, b], *args).total
    assert plain.tolist() == pytest.approx([201.0, 202.0, 803.0])
    # a z-scored (population std √(2/3)): [-1.2247, 0, 1.2247]; b: mean 200, std 141.42 →
    # [-0.7071, -0.7071, 1.4142]; weighted 1·a + 2·b
    comps = score_rewards([a, b], *args, normalize="components").total
    assert comps.tolist() == pytest.approx([-2.6390, -1.4142, 4.0532], abs=1e-3)
    summed = score_rewards([a, b], *args, normalize="sum").total
    z = (plain - plain.mean()) / plain.std(unbiased=False)
    assert summed.tolist() == pytest.approx(z.tolist(), abs=1e-5)
    # the raw parts are logged unnormalised
    assert score_rewards([a, b], *args, normalize="sum").parts["b"].tolist() == [100.0, 100, 400]
    # a per-component flag is "normalise then sum" for that component only
    flagged = WeightedReward("b", listed([100.0, 100.0, 400.0]), 2.0, normalize=True)
    only_b = score_rewards([a, flagged], *args).total
    assert only_b.tolist() == pytest.approx([1 - 1.4142, 2 - 1.4142, 3 + 2.8284], abs=1e-3)


def _save_reward_model(path, tokenizer):
    random_reward_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)


def test_model_normalisation_with_stored_stats(tmp_path, world_tokenizer):
    _save_reward_model(tmp_path, world_tokenizer)
    spec = {"type": "model", "path": str(tmp_path), "normalize": True}
    with pytest.raises(FileNotFoundError, match="score_stats.json"):
        rewards_from_config([spec])
    (tmp_path / "score_stats.json").write_text(json.dumps({"mean": 0.5, "std": 2.0, "count": 9}))
    assert read_score_stats(tmp_path) == {"mean": 0.5, "std": 2.0, "count": 9}
    (normed,) = rewards_from_config([spec])
    (raw,) = rewards_from_config([{**spec, "normalize": False}])
    prompts, completions = ["什么是市盈率？", "q"], ["市盈率是", "a"]
    got, want = normed.fn(prompts, completions), raw.fn(prompts, completions)
    assert got == pytest.approx([(w - 0.5) / 2.0 for w in want], abs=1e-6)
    (tmp_path / "score_stats.json").write_text(json.dumps({"mean": 0.5, "std": 0.0}))
    with pytest.raises(ValueError, match="std > 0"):
        LocalRewardModel.from_pretrained(tmp_path, normalize=True)


def test_weighted_sum_of_model_and_rule(tmp_path, world_tokenizer):
    _save_reward_model(tmp_path, world_tokenizer)
    rewards = rewards_from_config(
        [
            {"type": "model", "path": str(tmp_path), "weight": 0.5, "name": "rm"},
            {"type": "rule", "rule": "format", "pattern": "答案：.*", "weight": 2.0},
        ]
    )
    prompts, completions = ["q1", "q2"], ["答案：1", "不知道"]
    out = score_rewards(rewards, prompts, completions, {})
    model_scores = rewards[0].fn(prompts, completions)
    expected = [0.5 * model_scores[0] + 0.0, 0.5 * model_scores[1] - 2.0]
    assert out.total.tolist() == pytest.approx(expected, abs=1e-6)
    assert set(out.parts) == {"rm", "format_penalty"}


def test_config_errors_name_the_entry():
    with pytest.raises(ValueError, match=r"rewards\[0\].type: expected one of"):
        rewards_from_config([{"type": "magic"}])
    with pytest.raises(ValueError, match=r"'rewards\[1\]\.wieght'.*did you mean 'weight'"):
        rewards_from_config([{"type": "rule", "rule": "mcq"}, {"type": "rule", "wieght": 1}])
    with pytest.raises(ValueError, match=r"rewards\[0\].url: required"):
        rewards_from_config([{"type": "http"}])
    with pytest.raises(ValueError, match=r"rewards\[0\].normalize"):
        rewards_from_config([{"type": "rule", "rule": "mcq", "normalize": True}])
    with pytest.raises(ValueError, match="duplicate names"):
        rewards_from_config([{"type": "rule", "rule": "mcq"}] * 2)
    with pytest.raises(ValueError, match="token_env: environment variable"):
        rewards_from_config(
            [{"type": "http", "url": "http://127.0.0.1:1/score", "token_env": "NO_SUCH_VAR_X"}]
        )


# ------------------------------------------------------------------ in PPO

DROPPING_REWARD = """
def every_fourth_unscored(prompts, completions, **kw):
    return [None if k % 4 == 0 else 0.1 for k in range(len(completions))]
"""


@pytest.mark.slow
def test_ppo_with_python_file_model_and_rule_and_dropped_samples(tiny_world, tmp_path):
    """A weighted sum of a reward model, the tiny rule and a Python function from a file that
    leaves every fourth sample unscored (dropped: no tokens, counted)."""
    from align.ppo.run import build_trainer
    from tests.integration.test_ppo_run import small_config

    file = tmp_path / "drop_reward.py"
    file.write_text(DROPPING_REWARD, encoding="utf-8")
    rewards = [
        {"type": "model", "path": str(tiny_world.reward), "weight": 0.5, "name": "rm"},
        {"type": "rule", "rule": "tiny", "name": "rule"},
        {"type": "python", "fn": f"{file}:every_fourth_unscored", "on_invalid": "drop"},
    ]
    cfg = small_config(tiny_world, tmp_path / "run", total_steps=2, save_every=0, rewards=rewards)
    trainer = build_trainer(cfg)
    rows, ids = trainer.prompts[:4], trainer.prompt_ids[:4]
    exp, info = trainer.make_experience(rows, ids, {})
    dropped = info["dropped"]
    assert dropped.tolist() == [k % 4 == 0 for k in range(8)]  # 4 prompts × 2 samples
    assert exp.mask[dropped].sum() == 0 and exp.mask[~dropped].sum(1).min() > 0
    # no reward for dropped samples beyond the missing-EOS penalty (and no tokens to carry it)
    penalty = -cfg.missing_eos_penalty * info["truncated"][dropped].float()
    assert torch.equal(exp.scores[dropped].cpu(), penalty)
    metrics = trainer.train()
    assert metrics["step"] == 2
    assert metrics["reward/dropped"] == pytest.approx(0.25)
    for name in ("rm", "rule", "every_fourth_unscored"):
        assert f"reward/{name}" in metrics
