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


#: The dataset columns :func:`tiny_world_reward` reads (checked up front by
#: :func:`rm.functions.check_reward_columns`, which names the prompts file).
REQUIRED_COLUMNS = ("category", "reference")


def tiny_world_reward(
    prompts: list,
    completions: list,
    category: list[str] | None = None,
    reference: list[str] | None = None,
    **columns: object,
) -> list[float]:
    """TRL ``reward_funcs`` entry point for the tiny world.

    ``completions`` may be strings or conversational (``[{"role": "assistant", "content": ...}]``).
    Prompt records without a ``reference`` answer (or with a ``category`` that is not a tiny-world
    sub-domain) are a ``ValueError`` naming the column and the samples.
    """
    present = [k for k, v in (("category", category), ("reference", reference)) if v is not None]
    given = sorted({*present, *columns} - _NOT_RECORD_COLUMNS)
    _require_column("reference", reference, len(completions), given)
    _require_column("category", category, len(completions), given)
    unknown = sorted({c for c in category if c not in ANSWER_SHAPES})
    if unknown:
        raise ValueError(
            f"the tiny world reward: category {unknown[0]!r} is not a tiny-world sub-domain "
            f"(expected one of {', '.join(ANSWER_SHAPES)})"
        )
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [score(c, t, r) for c, t, r in zip(category, texts, reference, strict=True)]


tiny_world_reward.required_columns = REQUIRED_COLUMNS


def _require_column(name: str, values: list | None, n: int, given: list[str]) -> None:
    """A ``ValueError`` naming ``name`` when the column is absent, or None / not text for some
    samples."""
    if values is None:
        raise ValueError(
            f"the tiny world reward needs a '{name}' column in the prompt records (the "
            f"{_WHAT[name]}), and they have none (columns: {', '.join(given) or 'none'}); "
            f"add '{name}' to every prompt record or choose other rewards"
        )
    missing = [k for k, v in enumerate(values) if not isinstance(v, str)]
    if len(values) != n or missing:
        raise ValueError(
            f"the tiny world reward needs a '{name}' text for every sample ({_WHAT[name]}); "
            f"samples {missing[:10]} have none"
        )


_NOT_RECORD_COLUMNS = {"prompt_ids", "completion_ids", "trainer_state", "log_extra", "log_metric"}
_WHAT = {"reference": "reference answer it scores against", "category": "sub-domain"}
