"""The pure side of ``align chat`` (:mod:`align.chat.session`): truncation from the oldest
turn with the system message kept, ``/save``, and the ``--input`` reader."""

from __future__ import annotations

import json

import pytest

from align.chat.session import Session, read_turns


def ten_tokens_per_message(messages: list[dict]) -> list[int]:
    """A stand-in encoder: 10 tokens per message (the truncation depends on counts only)."""
    return [0] * (10 * len(messages))


def conversation(pairs: int) -> Session:
    session = Session(system="S")
    for k in range(pairs):
        session.add("user", f"q{k}")
        session.add("assistant", f"a{k}")
    session.add("user", "now")
    return session


def test_fit_drops_the_oldest_pairs_and_keeps_the_system_message():
    session = conversation(3)  # system + 3 pairs + the new turn: 8 messages, 80 tokens
    fitted = session.fit(ten_tokens_per_message, budget=45)  # room for 4 messages
    assert fitted.dropped == 2 and len(fitted.ids) == 40
    assert [m["content"] for m in fitted.messages] == ["S", "q2", "a2", "now"]
    # dropped turns stay dropped; /save still writes everything since the last reset
    assert session.fit(ten_tokens_per_message, budget=1000).dropped == 0
    assert len(session.window()) == 4 and len(session.conversation()) == 8


def test_fit_refuses_a_turn_that_alone_does_not_fit():
    session = conversation(1)
    with pytest.raises(ValueError, match="the prompt is 20 tokens with no earlier turns"):
        session.fit(ten_tokens_per_message, budget=15)
    session.drop_pending_user()
    assert session.messages[-1]["role"] == "assistant"


def test_reset_keeps_the_system_message_and_save_writes_json_or_jsonl(tmp_path):
    session = conversation(1)
    session.add("assistant", "a")
    assert session.save(tmp_path / "c.json") == 5
    saved = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
    assert saved[0] == {"role": "system", "content": "S"} and saved[-1]["content"] == "a"
    session.reset()
    assert session.save(tmp_path / "c.jsonl") == 1
    assert session.window() == [{"role": "system", "content": "S"}]


def test_read_turns_plain_and_jsonl(tmp_path):
    plain = tmp_path / "t.txt"
    plain.write_text("a\n\n/reset\nb\n", encoding="utf-8")
    assert read_turns(plain) == ["a", "/reset", "b"]
    rows = tmp_path / "t.jsonl"
    rows.write_text('{"role": "system", "content": "S"}\n{"content": "q"}\n', encoding="utf-8")
    assert read_turns(rows) == ["/system S", "q"]
    rows.write_text('{"content": "q"}\n{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"t.jsonl:2: expected an object with a string 'content'"):
        read_turns(rows)
    plain.write_text("/reset\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no user turns"):
        read_turns(plain)
