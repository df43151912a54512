"""Reward sources that misbehave or are misconfigured: one RewardError naming the source; means of
scores over kept samples only."""

from __future__ import annotations

import math

import pytest
import torch

from align.tiny.reward import tiny_world_reward
from rm.errors import RewardError
from rm.functions import (
    PythonReward,
    RewardScores,
    WeightedReward,
    check_reward_columns,
    kept_mean,
    rewards_from_config,
    score_rewards,
)
from rm.remote import RemoteRewardError

PROMPTS, COMPLETIONS = ["p1", "p2"], ["a", "b"]


def _score(tmp_path, body: str, **spec):
    """Score two samples with the Python reward ``f`` defined by ``body`` in a file."""
    file = tmp_path / "bad_reward.py"
    file.write_text(f"def f(prompts, completions, **kw):\n    {body}\n", encoding="utf-8")
    rewards = rewards_from_config([{"type": "python", "fn": f"{file}:f", **spec}])
    return score_rewards(rewards, PROMPTS, COMPLETIONS, {}), f"{file}:f"


def test_a_reward_that_raises_is_a_reward_error_naming_it_and_its_spec(tmp_path):
    with pytest.raises(RewardError) as caught:
        _score(tmp_path, "raise KeyError('answer')")
    spec = f"{tmp_path}/bad_reward.py:f"
    assert str(caught.value) == (
        f"reward function 'f' (rewards[0]: type python, fn '{spec}') raised KeyError: 'answer'"
    )
    assert isinstance(caught.value.__cause__, KeyError)  # kept for ALIGN_DEBUG=1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "return ['high', 0.5]",
            r"'f': score 0 is 'high', expected a number or None \(rewards\[0\]",
        ),
        ("return [True, 0.5]", r"'f': score 0 is True, expected a number or None"),
        ("return 'high'", r"'f' returned str, expected a list of numbers .*\(rewards\[0\]"),
        ("return [0.5]", r"'f' returned 1 scores for 2 samples \(rewards\[0\]: type python"),
        (
            "return [None, 0.5]",
            r"'f' returned None/NaN/inf for samples \[0\] \(e.g. None\) "
            r"\(rewards\[0\].*set on_invalid: drop",
        ),
    ],
)
def test_bad_return_values_are_reward_errors_naming_the_function(tmp_path, body, message):
    with pytest.raises(RewardError, match=message):
        _score(tmp_path, body)


def test_wrong_types_stay_type_errors_for_existing_callers(tmp_path):
    with pytest.raises(TypeError, match="score 0 is 'high'"):
        _score(tmp_path, "return ['high', 0.5]")


def test_a_plain_callable_is_named_by_its_function_name():
    def judge(prompts, completions, **_):
        return 1 / 0

    reward = PythonReward(judge)
    with pytest.raises(RewardError, match=r"^reward function 'judge' raised ZeroDivisionError"):
        reward(PROMPTS, COMPLETIONS)


def test_a_reward_file_that_fails_to_import_names_the_spec(tmp_path):
    file = tmp_path / "broken.py"
    file.write_text("def f(:\n", encoding="utf-8")
    message = r"rewards\[0\] \(type python\): reward function spec .*broken.py:f': importing .*"
    with pytest.raises(RewardError, match=message + "raised SyntaxError"):
        rewards_from_config([{"type": "python", "fn": f"{file}:f"}])


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ({"type": "python"}, r"^rewards\[0\]\.fn: required for type python \('package\.module"),
        ([{"type": "http"}], r"^rewards\[0\]\.url: required for type http"),
        ([{"weight": 2}], r"^rewards\[0\]\.type: missing; expected one of"),
        (["python"], r"^rewards\[0\]: expected a mapping such as"),
        ("python", r"^rewards: expected a list of mappings"),
        ([{"type": "rule", "rule": "tiny", "weight": "heavy"}], r"^rewards\[0\]\.weight: expected"),
    ],
)
def test_config_mistakes_name_the_entry_and_field(specs, message):
    with pytest.raises(RewardError, match=message):
        rewards_from_config(specs)


def test_a_single_mapping_is_a_list_of_one():
    (reward,) = rewards_from_config({"type": "rule", "rule": "tiny"})
    assert reward.name == "tiny_world_reward"
    assert reward.source == "rewards[0]: type rule, rule 'tiny'"


def test_remote_errors_are_user_errors():
    assert issubclass(RemoteRewardError, RewardError) and issubclass(RewardError, ValueError)


# ------------------------------------------------------------------ means over kept samples


def test_means_leave_dropped_samples_out():
    """All kept scores 0.5, half the samples dropped: the mean is 0.5 (not 0.25)."""

    def half(prompts, completions, **_):
        return [None if k % 2 == 0 else 0.5 for k in range(len(completions))]

    scored = score_rewards(
        [WeightedReward("half", half, 1.0, on_invalid="drop")], ["p"] * 4, ["a"] * 4, {}
    )
    assert scored.total.tolist() == [0.0, 0.5, 0.0, 0.5]  # placeholders where dropped
    assert scored.kept.tolist() == [False, True, False, True] and scored.n_dropped == 2
    assert scored.means() == {"score": 0.5, "half": 0.5}
    assert kept_mean(scored.total, scored.kept) == 0.5


def test_kept_mean_of_nothing_is_nan():
    scores = RewardScores(torch.zeros(2), {}, torch.zeros(2, dtype=torch.bool))
    assert math.isnan(scores.means()["score"])


# ------------------------------------------------------------------ required columns


ROWS = [{"prompt": "q", "category": "金融计算"}, {"prompt": "q2", "category": "金融计算"}]


def test_the_tiny_reward_without_reference_names_the_column():
    with pytest.raises(ValueError, match=r"needs a 'reference' column .* \(columns: category\)"):
        tiny_world_reward(["q"], ["a"], category=["金融计算"])
    with pytest.raises(ValueError, match=r"'reference' text for every sample .* samples \[1\]"):
        tiny_world_reward(["q", "q"], ["a", "a"], category=["金融计算"] * 2, reference=["答", None])
    with pytest.raises(ValueError, match=r"category 'cooking' is not a tiny-world sub-domain"):
        tiny_world_reward(["q"], ["a"], category=["cooking"], reference=["r"])


def test_the_tiny_reward_through_the_config_names_function_and_column():
    rewards = rewards_from_config([{"type": "rule", "rule": "tiny"}])
    message = (
        r"^reward function 'tiny_world_reward' \(rewards\[0\]: type rule, rule 'tiny'\) raised "
        r"ValueError: the tiny world reward needs a 'reference' column"
    )
    with pytest.raises(RewardError, match=message):
        score_rewards(rewards, ["q", "q2"], ["a", "b"], {"category": ["金融计算"] * 2})


def test_check_reward_columns_names_the_file_and_column():
    rewards = rewards_from_config([{"type": "python", "fn": "align.tiny.reward:tiny_world_reward"}])
    with pytest.raises(RewardError) as caught:
        check_reward_columns(rewards, ROWS, "data/my_prompts.jsonl")
    assert str(caught.value) == (
        "data/my_prompts.jsonl: column 'reference' missing (no record has it; columns: category, "
        "prompt), needed by reward function 'tiny_world_reward' (rewards[0]: type python, fn "
        "'align.tiny.reward:tiny_world_reward')"
    )
    partly = [{**ROWS[0], "reference": "r"}, ROWS[1]]
    with pytest.raises(RewardError, match=r"column 'reference' missing \(rows \[1\];"):
        check_reward_columns(rewards, partly, "p.jsonl")
    complete = [{**r, "reference": "r"} for r in ROWS]
    check_reward_columns(rewards, complete, "p.jsonl")  # nothing missing: no error
