"""The trainer side of the server weight sync, without a vLLM server: the concurrency helper that
must fail fast, the gloo group, and the errors a misconfigured server gets (a small local HTTP
server answering like a vLLM server started without ``VLLM_SERVER_DEV_MODE``)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time

import pytest
import torch

pytest.importorskip("vllm")

from rollouts.weight_transfer import _concurrently, join_gloo_group  # noqa: E402


def test_concurrently_returns_when_both_sides_are_done():
    done = []
    _concurrently(lambda: done.append("call"), lambda: done.append("work"))
    assert sorted(done) == ["call", "work"]


@pytest.mark.parametrize("failing", ["call", "work"])
def test_concurrently_raises_the_first_error_without_waiting_for_the_other_side(failing):
    """The side that would wait forever (a collective whose peer is gone) does not hold the
    error back."""
    never = threading.Event()

    def fail():
        raise ValueError(f"{failing} failed")

    sides = {"call": never.wait, "work": never.wait, failing: fail}
    started = time.monotonic()
    with pytest.raises(ValueError, match=f"{failing} failed"):
        _concurrently(sides["call"], sides["work"])
    assert time.monotonic() - started < 5


def test_gloo_group_broadcasts_from_rank_zero(tmp_path):
    """Rank 0 here, rank 1 in another process: what rank 1 receives is what rank 0 sent."""
    from rollouts.vllm_server import free_port

    port = free_port()
    peer = tmp_path / "peer.py"
    peer.write_text(
        "import sys, torch\n"
        "from rollouts.weight_transfer import join_gloo_group\n"
        f"group = join_gloo_group('127.0.0.1', {port}, 1, 2, 60)\n"
        "t = torch.empty(3, 4, dtype=torch.bfloat16)\n"
        "group.broadcast(t, 0).wait()\n"
        "print(t.float().sum().item())\n"
    )
    proc = subprocess.Popen([sys.executable, str(peer)], stdout=subprocess.PIPE, text=True)
    group = join_gloo_group("127.0.0.1", port, 0, 2, 60)
    sent = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)
    group.broadcast(sent, 0).wait()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert float(out.strip().splitlines()[-1]) == float(sent.float().sum())


class _NoDevRoutes(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"detail":"Not Found"}')

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


def test_a_server_without_dev_routes_gets_an_error_saying_how_to_start_it():
    from rollouts.vllm_server import ServerOptions, VLLMServerEngine

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoDevRoutes)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        engine = VLLMServerEngine(ServerOptions(url=url, weight_sync="gloo"), [1])
        with pytest.raises(ValueError) as error:
            engine.sync_weights(torch.nn.Linear(2, 2))
        message = str(error.value)
        assert f"vLLM server at {url}/is_paused: 404" in message
        assert "VLLM_SERVER_DEV_MODE=1" in message
        assert '--weight-transfer-config \'{"backend": "align_gloo"}\'' in message
    finally:
        httpd.shutdown()
