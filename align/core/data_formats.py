"""Other shapes of the record kinds, turned into align's own (layer 0, stdlib only).

:func:`normalise` maps one row to the record shape of its kind (see :mod:`align.core.data`):

- TRL's conversational formats: a ``prompt`` message list becomes ``messages``; ``chosen`` /
  ``rejected`` message lists become the text of their single assistant reply; with no prompt, the
  turns ``chosen`` and ``rejected`` share are the prompt (TRL's ``extract_prompt``); SFT
  ``prompt`` + ``completion`` message lists become one ``messages`` conversation.
- TRL's standard implicit-prompt preferences (``chosen`` / ``rejected`` texts, no prompt): the
  longest common prefix is the prompt, exactly as TRL's ``extract_prompt`` cuts it.
- UltraFeedback-binarized rows (``prompt`` text, ``chosen`` / ``rejected`` whole conversations,
  ``messages``, ``prompt_id``, ``score_*``): prompts keep ``prompt`` (``id`` = ``prompt_id``),
  preferences take the shared turns as ``messages`` and the last replies, SFT takes ``messages``.
- HelpSteer2 rows (``prompt``, ``response``, ``helpfulness``, ...): SFT reads ``response`` as the
  completion; preferences pair rows with :func:`helpsteer2_pairs`.
- ``default_category`` fills ``category`` where a row has none.

Problems are ``(field, expected, got)`` tuples naming the field as the source row spells it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "HELPSTEER2_RULE",
    "Normalised",
    "helpsteer2_pairs",
    "is_conversation",
    "is_helpsteer2",
    "normalise",
]


class _Missing:
    """Sentinel for "the field is absent" (as opposed to present with value ``None``)."""

    def __repr__(self) -> str:
        return "<missing>"

    def __reduce__(self) -> str:
        return "_MISSING"


_MISSING: Any = _Missing()

Problem = tuple[str | None, str, object]  # (field, expected, got)

HELPSTEER2_RULE = (
    "consecutive rows with the same prompt form a pair; the response with the higher "
    "helpfulness is chosen; equal helpfulness, or a row with no neighbour of the same prompt, "
    "is left out and counted"
)
_ONE_REPLY = "a list of one assistant message after the prompt turns"


@dataclass
class Normalised:
    """One row in its kind's shape; ``renames`` maps a record field back to the source's name."""

    record: dict
    problems: list[Problem] = field(default_factory=list)
    renames: dict[str, str] = field(default_factory=dict)


def is_conversation(value: object) -> bool:
    """A non-empty list of message objects (TRL's test: the first item has a ``role``)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, Mapping) for m in value)
        and "role" in value[0]
    )


def _is_ultrafeedback(row: Mapping[str, Any]) -> bool:
    """UltraFeedback-binarized: ``prompt`` text beside whole ``chosen`` / ``rejected`` chats."""
    return isinstance(row.get("prompt"), str) and (
        is_conversation(row.get("chosen")) or is_conversation(row.get("rejected"))
    )


def is_helpsteer2(columns: Iterable[str]) -> bool:
    """HelpSteer2's columns: one ``response`` per row, rated, no ``chosen`` / ``completion``."""
    names = set(columns)
    return {"prompt", "response", "helpfulness"} <= names and not names & {"chosen", "completion"}


def _without(row: Mapping[str, Any], *names: str) -> dict:
    return {k: v for k, v in row.items() if k not in names}


def _plain(messages: list) -> list[dict]:
    return [dict(m) for m in messages]


def _shared_turns(chosen: list, rejected: list) -> int:
    """How many leading messages the two conversations share."""
    n = 0
    for a, b in zip(chosen, rejected):
        if (a.get("role"), a.get("content")) != (b.get("role"), b.get("content")):
            break
        n += 1
    return n


def _reply(messages: object, start: int, name: str) -> tuple[object, list[Problem]]:
    """The content of the single assistant message ``messages[start:]``."""
    rest = messages[start:] if isinstance(messages, list) else messages
    ok = isinstance(rest, list) and len(rest) == 1 and isinstance(rest[0], Mapping)
    if not ok or rest[0].get("role") != "assistant":
        return None, [(name, _ONE_REPLY, rest)]
    return rest[0].get("content", _MISSING), []


def _text_prefix(chosen: str, rejected: str) -> int:
    """TRL's ``extract_prompt`` cut for texts: the common prefix, less a trailing space."""
    idx = min(len(chosen), len(rejected))
    for i in range(idx):
        if chosen[i] != rejected[i]:
            idx = i - 1 if i > 0 and chosen[i - 1] == " " else i
            break
    return idx


# --------------------------------------------------------------------------- per kind


def _prompts(row: Mapping[str, Any]) -> Normalised:
    if _is_ultrafeedback(row):
        record = _without(row, "messages", "chosen", "rejected")
        if record.get("id") is None and row.get("prompt_id") is not None:
            record["id"] = row["prompt_id"]
        return Normalised(record)
    if is_conversation(row.get("prompt")) and row.get("messages") is None:
        record = {**_without(row, "prompt"), "messages": _plain(row["prompt"])}
        return Normalised(record, renames={"messages": "prompt"})
    return Normalised(dict(row))


def _conversational_pair(row: Mapping[str, Any]) -> Normalised:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not is_conversation(value):
            return Normalised(dict(row), [(name, "a message list, like the other side", value)])
    prompt = row.get("prompt")
    if is_conversation(prompt):  # explicit prompt: chosen / rejected hold the replies only
        messages, start, renames = _plain(prompt), 0, {"messages": "prompt"}
    else:  # implicit prompt (TRL) or UltraFeedback: the shared turns are the prompt
        start = _shared_turns(chosen, rejected)
        messages, renames = _plain(chosen[:start]), {"messages": "chosen"}
        if start == 0:
            expected = "two conversations that begin with the same prompt turns"
            return Normalised(dict(row), [("chosen|rejected", expected, _MISSING)])
    chosen_text, problems = _reply(chosen, start, "chosen")
    rejected_text, more = _reply(rejected, start, "rejected")
    if problems or more:
        return Normalised(dict(row), problems + more)
    base = _without(row, "prompt", "messages", "chosen", "rejected")
    if base.get("id") is None and row.get("prompt_id") is not None:
        base["id"] = row["prompt_id"]
    record = {**base, "messages": messages, "chosen": chosen_text, "rejected": rejected_text}
    return Normalised(record, renames=renames)


def _implicit_text_pair(row: Mapping[str, Any]) -> Normalised:
    chosen, rejected = row["chosen"], row["rejected"]
    cut = _text_prefix(chosen, rejected)
    if not chosen[:cut].strip():
        expected = "prompt or messages, or chosen and rejected that begin with the same prompt"
        return Normalised(dict(row), [("prompt|messages", expected, _MISSING)])
    record = {
        **dict(row),
        "prompt": chosen[:cut],
        "chosen": chosen[cut:],
        "rejected": rejected[cut:],
    }
    return Normalised(record)


def _prefs(row: Mapping[str, Any]) -> Normalised:
    if is_conversation(row.get("chosen")) or is_conversation(row.get("rejected")):
        return _conversational_pair(row)
    no_prompt = row.get("prompt") is None and row.get("messages") is None
    if no_prompt and isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str):
        return _implicit_text_pair(row)
    return Normalised(dict(row))


_NO_TEXT_SFT = (
    "messages or prompt + completion (SFT supervises the answer only; "
    "train on plain text with align pretrain)"
)


def _sft(row: Mapping[str, Any]) -> Normalised:
    if _is_ultrafeedback(row):
        name = "messages" if is_conversation(row.get("messages")) else "chosen"
        if not is_conversation(row.get(name)):
            return Normalised(dict(row), [("messages", "a message list", row.get("messages"))])
        record = {**_without(row, "prompt", "chosen", "rejected"), "messages": _plain(row[name])}
        return Normalised(record, renames={"messages": name})
    if is_conversation(row.get("prompt")) and is_conversation(row.get("completion")):
        messages = _plain(row["prompt"]) + _plain(row["completion"])
        record = {**_without(row, "prompt", "completion"), "messages": messages}
        return Normalised(record, renames={"messages": "prompt+completion"})
    if is_helpsteer2(row) and isinstance(row.get("prompt"), str):
        record = {**_without(row, "response"), "completion": row["response"]}
        return Normalised(record, renames={"completion": "response"})
    sources = ("messages", "prompt", "completion")
    if row.get("text") is not None and all(row.get(name) is None for name in sources):
        return Normalised(dict(row), [("text", _NO_TEXT_SFT, row["text"])])
    return Normalised(dict(row))


_BY_KIND = {"prompts": _prompts, "prefs": _prefs, "sft": _sft}


def normalise(kind: str, row: Mapping[str, Any], default_category: str | None = None) -> Normalised:
    """``row`` in the shape of ``kind`` (the module docstring lists the shapes read).

    Pure and total: a row it cannot convert comes back unchanged with its problems; a row
    already in align's shape comes back as a copy (with ``default_category`` filled in).
    """
    convert = _BY_KIND.get(kind)
    out = convert(row) if convert is not None else Normalised(dict(row))
    if default_category is not None and out.record.get("category") is None:
        out.record["category"] = default_category
    return out


# --------------------------------------------------------------------------- HelpSteer2 pairs


def _helpfulness(row: Mapping[str, Any]) -> float | None:
    value = row.get("helpfulness")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else None


def _pair(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict | str:
    """The preference record of two responses to one prompt, or the reason there is none."""
    h1, h2 = _helpfulness(first), _helpfulness(second)
    if h1 is None or h2 is None:
        return "helpfulness is not a number"
    if h1 == h2:
        return "equal helpfulness"
    chosen, rejected = (first, second) if h1 > h2 else (second, first)
    return {
        "prompt": first["prompt"],
        "chosen": chosen.get("response"),
        "rejected": rejected.get("response"),
        "helpfulness_chosen": max(h1, h2),
        "helpfulness_rejected": min(h1, h2),
        **({"category": first["category"]} if first.get("category") is not None else {}),
    }


def helpsteer2_pairs(
    rows: Iterable[tuple[int, Mapping[str, Any]]],
) -> tuple[list[tuple[int, dict]], Counter]:
    """HelpSteer2 rows ``(row number, row)`` → preference records numbered by their first row.

    The rule (``HELPSTEER2_RULE``): consecutive rows with the same ``prompt`` form a pair and the
    response with the higher ``helpfulness`` is chosen. A pair of equal helpfulness, and a row
    whose neighbours have another prompt, are left out and counted by reason.
    """
    rows = list(rows)
    pairs: list[tuple[int, dict]] = []
    skipped: Counter = Counter()
    i = 0
    while i < len(rows):
        number, row = rows[i]
        nxt = rows[i + 1][1] if i + 1 < len(rows) else None
        if nxt is None or nxt.get("prompt") != row.get("prompt"):
            skipped["no second response to the same prompt"] += 1
            i += 1
            continue
        pair = _pair(row, nxt)
        if isinstance(pair, str):
            skipped[pair] += 2
        else:
            pairs.append((number, pair))
        i += 2
    return pairs, skipped
