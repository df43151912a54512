"""The reward server's request parser: strict JSON, bounded nesting, reserved column names."""

from __future__ import annotations

import json

import pytest

from align.cli.serve import check_exposure, is_loopback
from rm.server import MAX_DEPTH, BadRequest, decode_json, parse_request

GOOD = {"prompts": ["q"], "completions": ["a"]}


def body(**fields) -> bytes:
    return json.dumps({**GOOD, **fields}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"prompts": ["q"], "completions": ["a"], "id": NaN}', "NaN is not a JSON number"),
        (b'{"prompts": ["q"], "completions": ["a"], "id": -Infinity}', "-Infinity is not a JSON"),
        (b'{"prompts": ["q"], "completions": ["a"], "id": 1e999}', "1e999 overflows a double"),
        (b"[" * 100_000 + b"]" * 100_000, f"nested deeper than {MAX_DEPTH} levels"),
        (b'{"id": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}", "nested deeper"),
        (b'{"prompts": ["q"], "completions": ["a"], "id": 1', "malformed JSON: Expecting"),
    ],
)
def test_non_strict_or_too_deep_json_is_a_400(raw, reason):
    with pytest.raises(BadRequest, match=reason) as caught:
        parse_request(raw, max_items=8)
    assert caught.value.status == 400


def test_nesting_up_to_the_limit_is_accepted():
    nested = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)  # inside the top-level object
    assert parse_request(body()[:-1] + f', "id": {nested}}}'.encode(), 8)[3] is not None
    assert decode_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None


def test_reserved_metadata_names_and_messages_without_role_are_400():
    with pytest.raises(BadRequest, match="metadata may not have a column named 'prompts'"):
        parse_request(body(metadata={"prompts": ["x"]}), 8)
    with pytest.raises(BadRequest, match=r"'prompts\[0\]' must be a string or a list of"):
        parse_request(body(prompts=[[{"content": "hi"}]]), 8)


def test_a_good_request_parses():
    got = parse_request(body(id={"run": 3}, metadata={"category": ["x"]}), 8)
    assert got == (["q"], ["a"], {"category": ["x"]}, {"run": 3})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False),
     ("example.org", False)],
)  # fmt: skip
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_exposed_without_token_needs_the_explicit_flag():
    with pytest.raises(ValueError, match="--host 0.0.0.0: refusing .* --allow_unauthenticated"):
        check_exposure("0.0.0.0", None, allow_unauthenticated=False)
    assert "without a token" in check_exposure("0.0.0.0", None, allow_unauthenticated=True)
    assert check_exposure("0.0.0.0", "secret", allow_unauthenticated=False) is None
    assert check_exposure("127.0.0.1", None, allow_unauthenticated=False) is None
