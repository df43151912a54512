"""The tiny world's rule-based reward: an answer scored against the item's reference answer.

``score = 0.25·shape + 0.75·content`` in ``[-0.75, 1]``:

- ``shape`` is 1 when the answer takes its sub-domain's shape (:data:`ANSWER_SHAPES`), else 0;
- ``content`` depends on the sub-domain:
  金融计算 — 1 when the final number equals the reference's, else 0;
  合规与风险管理 — −1 for any promise of returns (:data:`FORBIDDEN_PROMISES`), 0 without the risk
  disclosure, otherwise the character-bigram F1 with the reference;
  everything else — the character-bigram F1 with the reference (facts from the glossaries).

The reference answer scores exactly 1. Follows TRL's ``reward_funcs`` convention, reading the
``category`` and ``reference`` dataset columns.
"""

from __future__ import annotations

import re
from collections import Counter

from align.tiny.world import (
    ANSWER_SHAPES,
    CALC,
    COMPLIANCE,
    FORBIDDEN_PROMISES,
    RISK_DISCLOSURE,
)

_FINAL_NUMBER = re.compile(r"答案：(-?\d+(?:\.\d+)?)")


def bigram_f1(text: str, reference: str) -> float:
    """F1 of the multisets of character bigrams; 1.0 for identical strings, 0.0 if either is empty.

    >>> bigram_f1("市盈率", "市盈率")
    1.0
    """
    a, b = Counter(zip(text, text[1:])), Counter(zip(reference, reference[1:]))
    overlap = sum((a & b).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(a.values()), overlap / sum(b.values())
    return 2 * precision * recall / (precision + recall)


def follows_shape(category: str, answer: str) -> bool:
    """Whether ``answer`` takes the shape answers of ``category`` take."""
    return ANSWER_SHAPES[category].fullmatch(answer.strip()) is not None


def _final_number(text: str) -> float | None:
    match = _FINAL_NUMBER.search(text)
    return float(match.group(1)) if match else None


def content_score(category: str, answer: str, reference: str) -> float:
    """How right the answer is, in [-1, 1] (see the module docstring)."""
    answer = answer.strip()
    if category == CALC:
        got, want = _final_number(answer), _final_number(reference)
        return float(got is not None and want is not None and abs(got - want) < 0.005)
    if category == COMPLIANCE:
        if any(p in answer for p in FORBIDDEN_PROMISES):
            return -1.0
        if RISK_DISCLOSURE not in answer:
            return 0.0
    return bigram_f1(answer, reference)


def score(category: str, answer: str, reference: str) -> float:
    """The reward of one answer."""
    return 0.25 * follows_shape(category, answer) + 0.75 * content_score(
        category, answer, reference
    )


def tiny_world_reward(
    prompts: list, completions: list, category: list[str], reference: list[str], **_: object
) -> list[float]:
    """TRL ``reward_funcs`` entry point for the tiny world.

    ``completions`` may be strings or conversational (``[{"role": "assistant", "content": ...}]``).
    """
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [score(c, t, r) for c, t, r in zip(category, texts, reference, strict=True)]
