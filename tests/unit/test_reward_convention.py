"""Python reward functions are called in TRL's ``reward_funcs`` convention, in full: TRL's own
functions plug in unchanged."""

from __future__ import annotations

import asyncio
import time

import pytest
from trl.rewards import get_soft_overlong_punishment, think_format_reward

from rm.errors import RewardError
from rm.functions import PythonReward, WeightedReward, score_rewards, trl_completions

CHAT = [[{"role": "user", "content": "q1"}], [{"role": "user", "content": "q2"}]]
ANSWERS = ["<think>\nreasoning\n</think>\nanswer", "no tags here"]


def test_conversational_prompts_get_conversational_completions():
    assert trl_completions(CHAT + ["plain"], ANSWERS + ["x"]) == [
        [{"role": "assistant", "content": ANSWERS[0]}],
        [{"role": "assistant", "content": ANSWERS[1]}],
        "x",  # a text prompt keeps a text completion
    ]


def test_trl_think_format_reward_runs_unchanged_on_chat_prompts():
    reward = PythonReward(think_format_reward)
    assert reward(CHAT, ANSWERS) == [1.0, 0.0]  # TRL's own docstring example, in our call


def test_trl_soft_overlong_punishment_reads_completion_ids():
    fn = get_soft_overlong_punishment(max_completion_len=100, soft_punish_cache=20)
    component = WeightedReward("overlong", PythonReward(fn), 1.0)
    ids = [[1] * 90, [1] * 50, [1] * 120]  # (80 - 90) / 20, 0 below 80, -1 above 100
    got = score_rewards([component], ["p"] * 3, ["a", "b", "c"], {}, extras={"completion_ids": ids})
    assert got.total.tolist() == pytest.approx([-0.5, 0.0, -1.0])


def test_trainer_state_and_columns_reach_the_function_and_not_other_sources():
    seen = {}

    def fn(prompts, completions, trainer_state, category, **kwargs):
        seen.update(step=trainer_state.global_step, category=category, keys=set(kwargs))
        return [float(trainer_state.global_step)] * len(completions)

    def strict(prompts, completions, category):  # no **kwargs: would fail if given extras
        return [1.0] * len(completions)

    state = type("State", (), {"global_step": 7})()
    rewards = [WeightedReward("fn", PythonReward(fn), 1.0), WeightedReward("strict", strict, 1.0)]
    got = score_rewards(rewards, ["p", "q"], ["a", "b"], {"category": ["x", "y"]},
                        extras={"trainer_state": state, "completion_ids": [[1], [2]]})  # fmt: skip
    assert got.total.tolist() == [8.0, 8.0]
    assert seen == {"step": 7, "category": ["x", "y"], "keys": {"completion_ids"}}


async def slow_length(prompts, completions, **kwargs):
    await asyncio.sleep(0.4)
    return [float(len(c)) for c in completions]


async def slow_one(prompts, completions, **kwargs):
    await asyncio.sleep(0.4)
    return [1.0] * len(completions)


def test_async_functions_are_awaited_concurrently():
    rewards = [WeightedReward("len", PythonReward(slow_length), 1.0),
               WeightedReward("one", PythonReward(slow_one), 10.0)]  # fmt: skip
    started = time.monotonic()
    got = score_rewards(rewards, ["p", "p"], ["ab", "abcd"], {})
    elapsed = time.monotonic() - started
    assert got.total.tolist() == [12.0, 14.0]
    assert 0.4 <= elapsed < 0.75  # together, not one after the other (0.8 s)
    assert PythonReward(slow_length)(["p"], ["abc"]) == [3.0]  # called on its own, too


def test_an_async_function_that_raises_is_a_reward_error_naming_it():
    async def broken(prompts, completions, **kwargs):
        raise KeyError("answer")

    with pytest.raises(RewardError, match=r"'broken' raised KeyError: 'answer'"):
        PythonReward(broken)(["p"], ["a"])


def test_async_function_inside_a_running_event_loop():
    async def caller():
        return PythonReward(slow_one)(["p"], ["a"])  # e.g. from a notebook cell

    assert asyncio.run(caller()) == [1.0]
