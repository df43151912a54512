"""The conversation of ``align chat``: messages, the system message, and the window of turns the
model sees, truncated from the oldest turn to fit the context. Pure: no model, no terminal.

``Session.messages`` holds every user/assistant message since the last ``/reset`` (what
``/save`` writes); ``start`` is the first one the model still sees. Truncation moves ``start``
forward one user+assistant pair at a time; the system message is always kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from align.core.chat_formats import Message


@dataclass
class Fitted:
    """A prompt that fits: its messages, its token ids, and how many turns were dropped."""

    messages: list[Message]
    ids: list[int]
    dropped: int


@dataclass
class Session:
    """One conversation (see the module docstring)."""

    system: str | None = None
    messages: list[Message] = field(default_factory=list)
    start: int = 0

    def window(self) -> list[Message]:
        """What the model sees: the system message (if any), then the kept turns."""
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + self.messages[self.start :]

    def reset(self) -> None:
        """Forget the conversation; the system message stays."""
        self.messages, self.start = [], 0

    def add(self, role: str, content: str) -> None:
        self.messages.append({"role": role, "content": content})

    def drop_pending_user(self) -> None:
        """Take back a user turn that got no answer (it did not fit, or generation failed)."""
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()

    def fit(self, encode: Callable[[list[Message]], list[int]], budget: int) -> Fitted:
        """The window with the oldest user+assistant pairs dropped until ``encode(window)`` is at
        most ``budget`` tokens (the context less the answer's ``max_new_tokens``); the dropped
        turns stay dropped. ``ValueError`` when the last user turn alone does not fit."""
        dropped = 0
        while True:
            ids = encode(self.window())
            if len(ids) <= budget:
                return Fitted(self.window(), ids, dropped)
            if len(self.messages) - self.start <= 1:  # only the new user turn is left
                raise ValueError(
                    f"the prompt is {len(ids)} tokens with no earlier turns, over the "
                    f"{budget} the context leaves (max_context less max_new_tokens)"
                )
            self.start += 2  # one user + one assistant message
            dropped += 1

    def conversation(self) -> list[Message]:
        """Everything since the last reset, the system message first (what ``/save`` writes)."""
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + list(self.messages)

    def save(self, path: str | Path) -> int:
        """Write :meth:`conversation` to ``path``: a JSON list for ``.json``, else JSONL (one
        message a line). Returns the number of messages."""
        messages, path = self.conversation(), Path(path)
        if path.suffix == ".json":
            text = json.dumps(messages, ensure_ascii=False, indent=1) + "\n"
        else:
            text = "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in messages)
        path.write_text(text, encoding="utf-8")
        return len(messages)


def read_turns(path: str | Path) -> list[str]:
    """The user turns of an ``--input`` file: one a line (blank lines skipped), or for
    ``.jsonl`` / ``.json`` files one JSON object a line with a string ``content`` (a line
    ``{"role": "system", "content": ...}`` becomes ``/system ...``). ``ValueError`` naming the
    file (and line) when it holds no turn or a line is not such an object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input: {path}: no such file")
    lines = path.read_text(encoding="utf-8").splitlines()
    turns = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        turns.append(_json_turn(path, number, line) if path.suffix in (".jsonl", ".json") else line)
    if not any(not t.startswith("/") for t in turns):
        raise ValueError(
            f"input: {path}: no user turns (expected one a line, or JSONL objects with 'content')"
        )
    return turns


def _json_turn(path: Path, number: int, line: str) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"input: {path}:{number}: not JSON ({error.msg})") from None
    if not isinstance(row, dict) or not isinstance(row.get("content"), str):
        raise ValueError(f"input: {path}:{number}: expected an object with a string 'content'")
    if row.get("role", "user") == "system":
        return "/system " + row["content"]
    return row["content"]
