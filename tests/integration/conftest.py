"""Fixtures shared by integration test files."""

from __future__ import annotations

import os

import pytest

from tests.helpers import TOKEN, start_reward_server


@pytest.fixture(scope="session")
def server(tiny_world, request, tmp_path_factory):
    """``align rm serve`` on the tiny world's reward model, on a free loopback port, with the
    bearer token ``TOKEN``, at most 64 samples and 20 000 bytes a request (one process for the
    whole session)."""
    base, stop = start_reward_server(
        tiny_world.reward,
        tmp_path_factory.mktemp("server") / "serve.log",
        ["--max-items", "64", "--max-request-bytes", "20000"],
        {**os.environ, "ALIGN_RM_TOKEN": TOKEN},
    )
    request.addfinalizer(stop)
    return base
