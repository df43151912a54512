"""Rule-based rewards in TRL's ``reward_funcs`` convention.

- :func:`mcq_match` — FinanceIQ-style multiple choice: 1 when the option letter the completion
  chooses equals the ``answer`` column (A–D; several letters for multi-answer items), else 0;
  ``None`` when the row has no answer (the item is not a multiple-choice item). The completion
  is read by :func:`align.core.answers.extract_choice`, the same reader the MCQ evaluator
  (``eval.mcq``) scores with, so the policy is rewarded exactly as it is judged.
- :class:`LengthPenalty` — ``-coef · max(0, len - target)`` in characters (or a band
  ``[min_chars, max_chars]`` outside which every character costs ``coef``).
- :class:`FormatPenalty` — ``-penalty`` when the completion does not fully match a regex.
- the tiny world's rule lives with the tiny world (``align.tiny.reward:tiny_world_reward``) and is
  selected as ``{type: rule, rule: tiny}``; it is imported only when asked for.

Config: ``{type: rule, rule: mcq | length | format | tiny, ...}`` (see :func:`make_rule`).
"""

from __future__ import annotations

import importlib
import re

from align.core.answers import extract_choice, normalise_key


def _text(completion) -> str:
    """A completion as text (conversational completions: the last message's content)."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def mcq_match(prompts: list, completions: list, answer: list, **_: object) -> list[float | None]:
    """1.0 when the chosen option(s) equal the ``answer`` column, 0.0 otherwise; None where the
    row has no answer.

    A one-letter key is matched as the evaluator matches it (``extract_choice(text)``: an answer
    naming several letters chooses nothing); a key of several letters (``"AC"``, ``"A、C"``) is
    matched against the sorted set of letters the completion names (``multi=True``), so
    ``"答案：CA"`` earns 1 for the key ``"AC"`` and ``"答案：A"`` earns 0. A key holding anything
    but A–D raises ValueError naming it.
    """
    out: list[float | None] = []
    for completion, want in zip(completions, answer, strict=True):
        if want is None or str(want).strip() == "":
            out.append(None)
            continue
        key = normalise_key(want)
        got = extract_choice(_text(completion), multi=len(key) > 1)
        out.append(float(got == key))
    return out


class LengthPenalty:
    """``-coef`` per character outside ``[min_chars, max_chars]`` (0 inside the band)."""

    def __init__(self, max_chars: int, coef: float = 0.01, min_chars: int = 0) -> None:
        if max_chars < min_chars or min_chars < 0 or coef < 0:
            raise ValueError(
                f"length rule: expected 0 <= min_chars <= max_chars and coef >= 0, got "
                f"min_chars={min_chars}, max_chars={max_chars}, coef={coef}"
            )
        self.max_chars, self.min_chars, self.coef = max_chars, min_chars, coef
        self.__name__ = "length_penalty"

    def __call__(self, prompts: list, completions: list, **_: object) -> list[float]:
        out = []
        for c in completions:
            n = len(_text(c))
            excess = max(0, n - self.max_chars) + max(0, self.min_chars - n)
            out.append(-self.coef * excess)
        return out


class FormatPenalty:
    """``-penalty`` when the stripped completion does not match ``pattern`` in full, else 0."""

    def __init__(self, pattern: str, penalty: float = 1.0) -> None:
        try:
            self.pattern = re.compile(pattern, re.DOTALL)
        except re.error as err:
            raise ValueError(f"format rule: bad pattern {pattern!r}: {err}") from err
        self.penalty = float(penalty)
        self.__name__ = "format_penalty"

    def __call__(self, prompts: list, completions: list, **_: object) -> list[float]:
        return [
            0.0 if self.pattern.fullmatch(_text(c).strip()) else -self.penalty for c in completions
        ]


def _tiny():
    # The tiny world's reward lives in align.tiny (orchestration, layer 3): loaded by name at use,
    # so that rm never imports the layers above it.
    return importlib.import_module("align.tiny.reward").tiny_world_reward


RULES = {
    "mcq": lambda: mcq_match,
    "length": lambda **kw: LengthPenalty(**kw),
    "format": lambda **kw: FormatPenalty(**kw),
    "tiny": _tiny,
}


def make_rule(rule: str, **options):
    """A rule by name: ``mcq`` (no options), ``length`` (``max_chars``, ``coef``, ``min_chars``),
    ``format`` (``pattern``, ``penalty``), ``tiny`` (no options)."""
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {sorted(RULES)}, got {rule!r}")
    try:
        return RULES[rule](**options)
    except TypeError as err:
        raise ValueError(f"rule '{rule}': bad options {sorted(options)}: {err}") from err
