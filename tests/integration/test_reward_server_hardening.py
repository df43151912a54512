"""``align rm serve`` answers malformed bodies with 400 and a reason (real server, 127.0.0.1)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from rm.server import MAX_DEPTH


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_world, request, tmp_path_factory):
    """``align rm serve`` on the tiny world's reward model, on a free loopback port."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("server") / "serve.log").open("w")
    env = {k: v for k, v in os.environ.items() if k != "ALIGN_RM_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "align.cli", "rm", "serve", "--model", str(tiny_world.reward)]
        + ["--port", str(port)],
        env={**env, "HF_HUB_OFFLINE": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def stop():
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

    request.addfinalizer(stop)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"reward server exited with {proc.returncode} (log: {log.name})")
        try:
            urllib.request.urlopen(base + "/health", timeout=1).read()
            return base
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


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
