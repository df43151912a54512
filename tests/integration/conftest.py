"""Fixtures shared by integration test files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import TOKEN, free_port, wait_healthy


@pytest.fixture(scope="session")
def server(tiny_world, request, tmp_path_factory):
    """``align rm serve`` on the tiny world's reward model, on a free loopback port, with the
    bearer token ``TOKEN``, at most 64 samples and 20 000 bytes a request (one process for the
    whole session)."""
    port = free_port()
    log = (tmp_path_factory.mktemp("server") / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "align.cli", "rm", "serve", "--model", str(tiny_world.reward)]
        + ["--port", str(port), "--max-items", "64", "--max-request-bytes", "20000"],
        env={**os.environ, "ALIGN_RM_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"},
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
    wait_healthy(base, proc, log.name)
    return base
