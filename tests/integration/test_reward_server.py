"""``align rm serve`` and the HTTP client, against real servers on 127.0.0.1.

The reward server runs as a subprocess started by a fixture (always stopped by its finalizer);
retry and timeout behaviour is checked against small standard-library servers that misbehave on
purpose.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rm.functions import LocalRewardModel, rewards_from_config, score_rewards
from rm.remote import RemoteRewardError, RemoteRewardModel
from tests.helpers import TOKEN, free_port, raw_post

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["什么是市盈率？", "什么是国债？", [{"role": "user", "content": "你好"}], "q"]
COMPLETIONS = ["市盈率是股价与每股收益之比。", "不知道", "您好", "答案：42"]


def test_server_scores_equal_local_scores_in_request_order(server, tiny_world):
    local = LocalRewardModel.from_pretrained(tiny_world.reward)(PROMPTS, COMPLETIONS)
    remote = RemoteRewardModel(server + "/score", token=TOKEN, batch_size=3)  # 2 requests
    assert remote(PROMPTS, COMPLETIONS) == pytest.approx(local, abs=1e-5)
    # reversed input → reversed scores: the order is the request's
    assert remote(PROMPTS[::-1], COMPLETIONS[::-1]) == pytest.approx(local[::-1], abs=1e-5)
    assert len(set(local)) == len(local)  # distinct, so a permutation would be caught


def test_concurrent_requests_are_batched_and_answered_separately(server, tiny_world):
    local = LocalRewardModel.from_pretrained(tiny_world.reward)(PROMPTS, COMPLETIONS)
    before = json.loads(urllib.request.urlopen(server + "/health").read())
    remote = RemoteRewardModel(server + "/score", token=TOKEN)

    def one(k: int) -> list:
        order = [(k + j) % 4 for j in range(4)]
        got = remote([PROMPTS[i] for i in order], [COMPLETIONS[i] for i in order])
        return [got[order.index(i)] for i in range(4)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(24)))
    for got in results:
        assert got == pytest.approx(local, abs=1e-5)
    after = json.loads(urllib.request.urlopen(server + "/health").read())
    assert after["requests"] - before["requests"] == 24
    assert after["batches"] - before["batches"] < 24  # some requests shared a forward pass
    assert after["largest_batch"] > 4


@pytest.mark.parametrize(
    "body, status, reason",
    [
        (b'{"prompts": [', 400, "malformed JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"prompts": ["a"], "completions": ["b", "c"]}', 400, "1 prompts but 2 completions"),
        (b'{"prompts": [1], "completions": ["b"]}', 400, "prompts[0]"),
        (b'{"prompts": ["a"], "completions": ["b"], "extra": 1}', 400, "unknown fields"),
        (b'{"prompts": ["a"], "completions": ["b"], "metadata": {"c": []}}', 400, "metadata"),
        (json.dumps({"prompts": ["a"] * 65, "completions": ["b"] * 65}).encode(), 413, "64"),
        (json.dumps({"prompts": ["a" * 30000], "completions": ["b"]}).encode(), 413, "bytes"),
    ],
)
def test_malformed_requests_get_the_reason_and_the_server_keeps_answering(
    server, body, status, reason
):
    got, answer = raw_post(server + "/score", body)
    assert got == status and reason in answer["error"]
    ok, answer = raw_post(server + "/score", b'{"prompts": ["q"], "completions": ["a"], "id": 5}')
    assert ok == 200 and len(answer["scores"]) == 1 and answer["id"] == 5


def test_missing_or_wrong_token_is_401_with_a_clear_message(server):
    assert raw_post(server + "/score", b'{"prompts": [], "completions": []}', None)[0] == 401
    assert raw_post(server + "/score", b'{"prompts": [], "completions": []}', "wrong")[0] == 401
    for token in (None, "wrong", TOKEN + "x"):
        client = RemoteRewardModel(server + "/score", token=token, retries=3)
        started = time.monotonic()
        with pytest.raises(RemoteRewardError, match=r"/score answered 401 Unauthorized: the token"):
            client(["q"], ["a"])
        assert time.monotonic() - started < 2  # a 4xx is not retried


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 ``fail_first`` times, then scores = completion lengths (``None`` for empty ones
    with ``nulls``, ``extra`` scores too many); sleeps ``delay`` first."""

    hits = 0
    fail_first = 0
    delay = 0.0
    nulls = False
    extra = 0

    def do_POST(self):  # noqa: N802 (http.server's naming)
        type(self).hits += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.delay)
        if type(self).hits <= self.fail_first:
            self._send(503, {"error": "warming up"})
        else:
            scores = [float(len(c)) if c or not self.nulls else None for c in body["completions"]]
            self._send(200, {"scores": scores + [0.0] * self.extra})

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky():
    handler = type("Handler", (_Flaky,), {"hits": 0})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/score"
    httpd.shutdown()
    httpd.server_close()


def test_5xx_is_retried_with_backoff_then_succeeds(flaky):
    handler, url = flaky
    handler.fail_first = 2
    started = time.monotonic()
    got = RemoteRewardModel(url, retries=3, backoff=0.1)(["p", "p"], ["ab", "abcd"])
    assert got == [2.0, 4.0] and handler.hits == 3
    assert time.monotonic() - started >= 0.1 + 0.2  # two backoffs: 0.1, then 0.2


def test_5xx_every_time_gives_up_naming_the_url(flaky):
    handler, url = flaky
    handler.fail_first = 100
    with pytest.raises(RemoteRewardError, match=rf"{url} failed after 3 attempts: HTTP 503: warm"):
        RemoteRewardModel(url, retries=2, backoff=0.01)(["p"], ["a"])
    assert handler.hits == 3


def test_timeout_is_a_clear_error(flaky):
    handler, url = flaky
    handler.delay = 1.5
    started = time.monotonic()
    with pytest.raises(RemoteRewardError, match=r"failed after 2 attempts: timed out after 0.3 s"):
        RemoteRewardModel(url, timeout=0.3, retries=1, backoff=0.01)(["p"], ["a"])
    assert time.monotonic() - started < 1.4  # did not wait for the slow answers
    assert handler.hits == 2


def test_server_down_retries_then_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/score"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(RemoteRewardError, match=rf"{url} failed after 4 attempts: connection"):
        RemoteRewardModel(url, retries=3, backoff=0.05)(["p"], ["a"])
    assert time.monotonic() - started >= 0.05 + 0.1 + 0.2  # the backoffs were waited


def test_server_returning_wrong_count_or_null_meets_the_policy(flaky):
    handler, url = flaky
    handler.nulls = True  # null for an empty completion
    spec = {"type": "http", "url": url, "name": "remote"}
    (reward,) = rewards_from_config([spec])
    with pytest.raises(ValueError, match=r"'remote' returned None/NaN/inf for samples \[1\]"):
        score_rewards([reward], ["p", "p"], ["ab", ""], {})
    (dropping,) = rewards_from_config([{**spec, "on_invalid": "drop"}])
    out = score_rewards([dropping], ["p", "p"], ["ab", ""], {})
    assert out.kept.tolist() == [True, False] and out.dropped == {"remote": 1}
    handler.extra = 1  # one score too many
    with pytest.raises(RemoteRewardError, match=rf"{url} returned 3 scores for 2 samples"):
        score_rewards([dropping], ["p", "p"], ["ab", "c"], {})


@pytest.mark.slow
def test_load_8_clients_x_50_requests(server):
    """The bench script against the fixture's server: nothing lost, duplicated or mixed up."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reward_server_load.py"), "--url"]
        + [server + "/score", "--token", TOKEN, "--clients", "8", "--requests", "50"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result)
    assert result["sent"] == result["answered"] == 400
    assert result["lost"] == result["duplicated"] == result["wrong"] == 0
    assert result["malformed_sent"] == result["malformed_400"] == 40
    assert result["p99_ms"] >= result["p50_ms"] > 0


def test_small_load_on_loopback(server):
    """8 clients × 5 requests in the fast suite (the 8 × 50 run is marked slow)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reward_server_load.py"), "--url"]
        + [server + "/score", "--token", TOKEN, "--clients", "8", "--requests", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["answered"] == 40 and result["lost"] == result["wrong"] == 0
    assert result["malformed_400"] == result["malformed_sent"] == 8


@pytest.mark.slow
def test_ppo_with_reward_from_the_server(server, tiny_world, tmp_path, monkeypatch):
    """PPO on the tiny world whose only reward is ``align rm serve`` (2 steps)."""
    from align.ppo.run import build_trainer
    from tests.integration.test_ppo_run import small_config

    monkeypatch.setenv("ALIGN_TEST_RM_TOKEN", TOKEN)
    spec = {"type": "http", "url": server + "/score", "token_env": "ALIGN_TEST_RM_TOKEN"}
    before = json.loads(urllib.request.urlopen(server + "/health").read())["samples"]
    cfg = small_config(tiny_world, tmp_path, total_steps=2, save_every=0, rewards=[spec])
    metrics = build_trainer(cfg).train()
    assert metrics["step"] == 2 and "eval/score" in metrics
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    name = f"reward/http:{server}/score"
    assert [r["step"] for r in rows if name in r] == [1, 2]
    served = json.loads(urllib.request.urlopen(server + "/health").read())["samples"] - before
    assert served == 2 * 16 + 2 * 8  # 2 steps × 16 samples + 2 evaluations × 8 prompts
    assert TOKEN not in (tmp_path / "config.yaml").read_text()  # the token stays out of the run


def test_serve_names_a_missing_model_directory(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "align.cli", "rm", "serve", "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "nope: not a model directory" in done.stderr
