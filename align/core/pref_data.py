"""Real preference data as ``prefs`` records (layer 0: stdlib + ``align.core.data``).

- HH-RLHF rows ``{"chosen": "\\n\\nHuman: …\\n\\nAssistant: …", "rejected": …}`` →
  ``{messages, chosen, rejected, category}``: the shared dialogue up to the last assistant turn
  becomes ``messages``, the two last assistant replies ``chosen`` / ``rejected``.
- FinanceIQ MCQ CSVs (``Question,A,B,C,D,Answer``) → one pair per wrong option: the prompt is
  FinanceIQ's zero-shot prompt, ``chosen`` names the correct option, ``rejected`` a wrong one,
  ``category`` the exam (file stem), ``id`` the question (so splits can keep a question's pairs
  together).

- UltraFeedback-binarized rows and HelpSteer2 rows (pairs of consecutive rows with the same
  prompt, the higher ``helpfulness`` chosen; :data:`align.core.data_formats.HELPSTEER2_RULE`) →
  records, as :func:`align.core.data.load_records` reads them; these two functions give the same
  records from rows in memory (to write a JSONL of them, say).

Rows that cannot become a valid pair are never dropped silently: the converters return them
counted by reason in a :class:`Conversion`.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from align.core.data import MCQ_OPTIONS, check_record, load_records
from align.core.data_formats import helpsteer2_pairs, normalise

__all__ = [
    "Conversion",
    "financeiq_prefs",
    "helpsteer2_prefs",
    "hh_rlhf_prefs",
    "load_hh_rlhf",
    "parse_hh_transcript",
    "ultrafeedback_prefs",
]

FINANCEIQ_PROMPT = (
    "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n"
    "题目：{question}\n{options}\n答案是："
)
_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class Conversion:
    """Converted records plus the rows left out, counted by reason."""

    records: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


def parse_hh_transcript(text: str) -> list[dict]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` → ``[{user: a}, {assistant: b}]`` as messages.

    Raises ValueError when the text does not start with a ``Human:`` turn.
    """
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 3 or parts[1] != "Human":
        raise ValueError("expected a transcript starting with '\\n\\nHuman:'")
    return [
        {"role": _ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)
    ]


def _hh_pair(row: dict, category: str) -> dict | str:
    """One record, or the reason the row cannot be one."""
    try:
        chosen, rejected = parse_hh_transcript(row["chosen"]), parse_hh_transcript(row["rejected"])
    except (KeyError, TypeError, ValueError):
        return "not a Human/Assistant transcript"
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return "does not end with an assistant turn"
    if chosen[:-1] != rejected[:-1]:
        return "chosen and rejected dialogues differ before the last turn"
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        return "empty response"
    if any(not m["content"] for m in chosen[:-1]):
        return "empty turn in the dialogue"
    return {
        "messages": chosen[:-1],
        "chosen": chosen[-1]["content"],
        "rejected": rejected[-1]["content"],
        "category": category,
    }


def hh_rlhf_prefs(rows: list[dict], category: str = "hh-harmless") -> Conversion:
    """Convert HH-RLHF rows (see the module docstring)."""
    out = Conversion()
    for row in rows:
        pair = _hh_pair(row, category)
        if isinstance(pair, str):
            out.skipped[pair] += 1
        else:
            out.records.append(pair)
    return out


def load_hh_rlhf(path: str | os.PathLike[str], category: str = "hh-harmless") -> Conversion:
    """Read an HH-RLHF JSON Lines file and convert it."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return hh_rlhf_prefs(rows, category)


def financeiq_prompt(row: dict) -> str:
    options = "\n".join(f"{o}. {row[o]}" for o in MCQ_OPTIONS)
    return FINANCEIQ_PROMPT.format(
        subject=row["category"], question=row["Question"], options=options
    )


def _mcq_pairs(row: dict, qid: str) -> list[dict]:
    prompt = financeiq_prompt(row)
    answer = row["Answer"]

    def say(option: str) -> str:
        return f"{option}. {row[option]}"

    return [
        {
            "id": qid,
            "prompt": prompt,
            "chosen": say(answer),
            "rejected": say(wrong),
            "category": row["category"],
        }
        for wrong in MCQ_OPTIONS
        if wrong != answer and row[wrong].strip() != row[answer].strip()
    ]


def financeiq_prefs(directory: str | os.PathLike[str]) -> Conversion:
    """Every ``*.csv`` in ``directory`` (FinanceIQ layout, category = file stem), sorted by name,
    as pairs; options whose text equals the correct one are counted and left out."""
    files = sorted(Path(directory).glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"{directory}: no FinanceIQ *.csv files")
    out = Conversion()
    for path in files:
        for i, row in enumerate(load_records(path, "mcq")):
            pairs = _mcq_pairs(row, f"{path.stem}-{i}")
            out.skipped["wrong option identical to the answer"] += 3 - len(pairs)
            out.records += pairs
    out.skipped = +out.skipped
    return out


def _keep_valid(out: Conversion, record: dict, problems: list) -> None:
    """Append ``record`` when it is a valid ``prefs`` record, else count its first problem."""
    problems = problems or check_record("prefs", record)
    if problems:
        name, expected, _ = problems[0]
        out.skipped[f"{name}: expected {expected}"] += 1
    else:
        out.records.append(record)


def ultrafeedback_prefs(rows: list[dict], category: str = "ultrafeedback") -> Conversion:
    """UltraFeedback-binarized rows → ``{messages, chosen, rejected, id, category, score_*}``;
    ``category`` where a row has none."""
    out = Conversion()
    for row in rows:
        converted = normalise("prefs", row, category)
        _keep_valid(out, converted.record, converted.problems)
    return out


def helpsteer2_prefs(rows: list[dict], category: str = "helpsteer2") -> Conversion:
    """HelpSteer2 rows → ``{prompt, chosen, rejected, helpfulness_*, category}``, paired by
    :data:`align.core.data_formats.HELPSTEER2_RULE`; ties and lone rows counted in ``skipped``."""
    pairs, skipped = helpsteer2_pairs(enumerate(rows, start=1))
    out = Conversion(skipped=Counter(skipped))
    for _, pair in pairs:
        _keep_valid(out, {**pair, "category": pair.get("category") or category}, [])
    return out
