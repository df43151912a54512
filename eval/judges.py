"""Judges: compare a candidate answer with a baseline answer to one prompt → good / same / bad.

Every judge implements :class:`Judge`: ``judge(prompts, answers_a, answers_b, categories,
**columns) -> list["good" | "same" | "bad" | None]`` where ``a`` is the candidate, ``b`` the
baseline, ``"good"`` means the candidate's answer is better and ``None`` that no verdict could be
reached (:mod:`eval.gsb` counts those as unjudged).

- :class:`RewardJudge` scores both answers with reward functions (a reward model, a remote one,
  rules, any TRL ``reward_funcs`` callable, or weighted sums built by
  :func:`rm.functions.rewards_from_config`) and calls a difference within ``margin`` "same".
- :class:`LLMJudge` asks a model behind an OpenAI-compatible chat API (see :mod:`eval.llm_judge`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from rm.functions import RewardFunction, WeightedReward, rewards_from_config, score_rewards

Verdict = str  # "good" | "same" | "bad"


@runtime_checkable
class Judge(Protocol):
    """Compares candidate answers (``a``) with baseline answers (``b``), one verdict each."""

    def judge(
        self,
        prompts: Sequence,
        answers_a: Sequence[str],
        answers_b: Sequence[str],
        categories: Sequence[str],
        **columns,
    ) -> list[Verdict | None]: ...


def verdicts_from_scores(
    a: torch.Tensor, b: torch.Tensor, margin: float, valid: torch.Tensor | None = None
) -> list[Verdict | None]:
    """``good`` where ``a - b > margin``, ``bad`` where ``a - b < -margin``, else ``same``.

    ``a``, ``b``: ``[N]`` scores; ``valid``: ``[N]`` bool, ``None`` (unjudged) where False.
    """
    diff = (a - b).tolist()
    ok = [True] * len(diff) if valid is None else valid.tolist()
    out: list[Verdict | None] = []
    for d, keep in zip(diff, ok):
        out.append(None if not keep else "good" if d > margin else "bad" if d < -margin else "same")
    return out


def check_lengths(prompts, answers_a, answers_b, categories) -> None:
    sizes = {len(prompts), len(answers_a), len(answers_b), len(categories)}
    if len(sizes) != 1:
        raise ValueError(
            "judge: prompts, answers_a, answers_b and categories need the same length, got "
            f"{len(prompts)}, {len(answers_a)}, {len(answers_b)}, {len(categories)}"
        )


class RewardJudge:
    """Scores both answers with reward functions; ``|r_a - r_b| <= margin`` is "same".

    ``reward``: one TRL-convention callable, or a list of :class:`~rm.functions.WeightedReward`
    (weighted sum, as PPO combines them). Both answers of every prompt are scored in one call,
    so batch-normalised components put them on the same scale. A sample any component drops
    (``on_invalid: drop``) leaves its comparison unjudged. ``category`` and every keyword column
    given to :meth:`judge` reach the reward functions.
    """

    def __init__(
        self,
        reward: RewardFunction | Sequence[WeightedReward],
        margin: float = 0.0,
        normalize: str = "none",
    ) -> None:
        if margin < 0:
            raise ValueError(f"margin: expected >= 0, got {margin}")
        if callable(reward):
            name = getattr(reward, "__name__", type(reward).__name__)
            reward = [WeightedReward(name, reward, 1.0)]
        self.rewards = list(reward)
        if not self.rewards:
            raise ValueError("RewardJudge needs at least one reward function")
        self.margin, self.normalize = margin, normalize

    @classmethod
    def from_config(cls, specs: list[dict], margin: float = 0.0, normalize: str = "none"):
        """From PPO's ``rewards:`` entries (see :func:`rm.functions.rewards_from_config`)."""
        return cls(rewards_from_config(specs), margin, normalize)

    def scores(self, prompts, answers_a, answers_b, categories, **columns):
        """``(r_a [N], r_b [N], valid [N] bool)``."""
        check_lengths(prompts, answers_a, answers_b, categories)
        n = len(prompts)
        both = {k: list(v) + list(v) for k, v in {"category": categories, **columns}.items()}
        out = score_rewards(
            self.rewards,
            list(prompts) + list(prompts),
            list(answers_a) + list(answers_b),
            both,
            self.normalize,
        )
        return out.total[:n], out.total[n:], out.kept[:n] & out.kept[n:]

    def judge(self, prompts, answers_a, answers_b, categories, **columns) -> list[Verdict | None]:
        if not len(prompts):
            return []
        a, b, valid = self.scores(prompts, answers_a, answers_b, categories, **columns)
        return verdicts_from_scores(a, b, self.margin, valid)


def reward_judge_from_config(
    specs: list[dict], margin: float = 0.0, normalize: str = "none"
) -> RewardJudge:
    """A :class:`RewardJudge` from PPO's ``rewards:`` config entries."""
    return RewardJudge.from_config(specs, margin, normalize)
