"""``align rm serve`` answers malformed bodies with 400 and a reason (real server, 127.0.0.1)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from rm.server import MAX_DEPTH
from tests.helpers import environment_without, start_reward_server


@pytest.fixture(scope="module")
def server(tiny_world, request, tmp_path_factory):
    """``align rm serve`` on the tiny world's reward model, on a free loopback port, without a
    token and with the default limits."""
    base, stop = start_reward_server(
        tiny_world.reward,
        tmp_path_factory.mktemp("server") / "serve.log",
        [],
        environment_without("ALIGN_RM_TOKEN"),
    )
    request.addfinalizer(stop)
    return base


def post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


GOOD = b'{"prompts": ["q"], "completions": ["a"]'


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (GOOD + b', "id": NaN}', "malformed JSON: NaN is not a JSON number (use null)"),
        (GOOD + b', "id": Infinity}', "malformed JSON: Infinity is not a JSON number (use null)"),
        (GOOD + b', "id": 1e999}', "malformed JSON: the number 1e999 overflows a double"),
        (b"[" * 100_000 + b"]" * 100_000, f"malformed JSON: nested deeper than {MAX_DEPTH} levels"),
        (GOOD + b', "id": ' + b"[" * 900 + b"]" * 900 + b"}", "malformed JSON: nested deeper"),
        (GOOD + b', "metadata": {"prompts": ["x"]}}', "metadata may not have a column named"),
        (
            b'{"prompts": [[{"content": "hi"}]], "completions": ["a"]}',
            "'prompts[0]' must be a string or a list of {role, content} messages",
        ),
    ],
)
def test_malformed_bodies_get_400_with_the_reason(server, body, reason):
    status, answer = post(server + "/score", body)
    assert status == 400
    assert answer["error"].startswith(reason)


def test_the_server_keeps_serving_after_bad_requests(server):
    before = json.loads(urllib.request.urlopen(server + "/health").read())
    assert post(server + "/score", GOOD + b', "id": NaN}')[0] == 400
    status, answer = post(server + "/score", GOOD + b', "id": [1, {"run": "x"}]}')
    assert status == 200 and answer["id"] == [1, {"run": "x"}]
    assert len(answer["scores"]) == 1 and isinstance(answer["scores"][0], float)
    after = json.loads(urllib.request.urlopen(server + "/health").read())
    assert after["rejected"] - before["rejected"] == 1
    assert after["requests"] - before["requests"] == 1
