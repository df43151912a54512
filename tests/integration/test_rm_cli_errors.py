"""Reward-side user mistakes at the command line: one line on stderr naming the culprit, exit 2.

Run as a user runs them (``python -m align.cli`` in a subprocess).
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def align(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ALIGN_RM_TOKEN", "ALIGN_DEBUG")}
    return subprocess.run(
        [sys.executable, "-m", "align.cli", *args],
        capture_output=True,
        text=True,
        env={**env, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
        timeout=timeout,
    )


def one_line_exit_2(done: subprocess.CompletedProcess) -> str:
    """The single stderr line of a command that failed with a user error."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("error: ")
    return lines[0]


# ------------------------------------------------------------------ align rm serve --host


def test_serve_beyond_loopback_without_token_is_refused(tmp_path):
    line = one_line_exit_2(align("rm", "serve", "--model", str(tmp_path), "--host", "0.0.0.0"))
    assert "--host 0.0.0.0: refusing to serve beyond this machine without a token" in line
    assert "--allow_unauthenticated" in line


def test_allow_unauthenticated_passes_the_host_check(tmp_path):
    """With the flag the next check speaks: the (empty) model directory."""
    done = align(
        "rm", "serve", "--model", str(tmp_path), "--host", "0.0.0.0", "--allow-unauthenticated"
    )
    assert one_line_exit_2(done) == f"error: {tmp_path}: not a model directory (no config.json)"


# ------------------------------------------------------------------ pickled weights


class _Tripwire:
    """Unpickling this creates the file ``path``: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def pickled_model(tmp_path) -> tuple[Path, Path]:
    """A Llama reward-model directory whose only weights are a ``pytorch_model.bin`` that would
    create a marker file if unpickled; returns (directory, marker)."""
    from transformers import LlamaConfig

    model, marker = tmp_path / "pickled-rm", tmp_path / "unpickled.marker"
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1,
        architectures=["LlamaForSequenceClassification"],
    )  # fmt: skip
    config.num_labels = 1
    config.save_pretrained(model)
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Tripwire(marker)))
    return model, marker


def _expect_refusal(done: subprocess.CompletedProcess, model: Path, marker: Path) -> None:
    line = one_line_exit_2(done)
    assert line.startswith(f"error: model: {model}: ")
    assert "pytorch_model.bin (pickle), but safetensors are required" in line
    assert not marker.exists()  # the pickle was never opened


def test_serve_refuses_pickled_weights(pickled_model):
    model, marker = pickled_model
    _expect_refusal(align("rm", "serve", "--model", str(model)), model, marker)


def test_train_refuses_pickled_weights(pickled_model, tmp_path):
    model, marker = pickled_model
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    done = align(
        "rm", "train", "--model", str(model), "--train_data", str(prefs),
        "--output_dir", str(tmp_path / "out"),
    )  # fmt: skip
    _expect_refusal(done, model, marker)


def test_eval_refuses_pickled_weights(pickled_model, tmp_path):
    model, marker = pickled_model
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    _expect_refusal(align("rm", "eval", "--model", str(model), "--data", str(prefs)), model, marker)


# ------------------------------------------------------------------ rewards in align ppo


def _ppo(world, out: Path, *args: str) -> subprocess.CompletedProcess:
    """A minimal PPO run on the tiny world (fails at the first reward call when rewards are bad;
    the evaluation before step 1 is the first)."""
    return align(
        "ppo",
        "--policy", str(world.policy), "--critic", str(world.reward),
        "--prompts", str(world.data("prompts")), "--eval_prompts", str(world.data("eval_prompts")),
        "--output_dir", str(out), "--total_steps", "1", "--rollout_batch_size", "2",
        "--samples_per_prompt", "1", "--num_minibatches", "1", "--micro_batch_size", "2",
        "--max_new_tokens", "4", "--eval_max_prompts", "2", "--save_every", "0",
        *args,
    )  # fmt: skip


def test_a_reward_spec_without_its_field_names_the_field(tiny_world, tmp_path):
    line = one_line_exit_2(_ppo(tiny_world, tmp_path / "run", "--rewards", "{type: python}"))
    assert line.startswith("error: rewards[0].fn: required for type python")


def test_an_unreachable_reward_server_after_retries(tiny_world, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/score"
    rewards = json.dumps([{"type": "http", "url": url, "retries": 1, "backoff": 0}])
    line = one_line_exit_2(_ppo(tiny_world, tmp_path / "run", "--rewards", rewards))
    assert line.startswith(f"error: reward server {url} failed after 2 attempts: connection failed")


def test_prompts_without_reference_under_the_tiny_reward(tiny_world, tmp_path):
    rows = [json.loads(x) for x in tiny_world.data("eval_prompts").read_text().splitlines()][:4]
    assert all("reference" in r for r in rows)
    prompts = tmp_path / "no_reference.jsonl"
    prompts.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "reference"}) + "\n" for r in rows),
        encoding="utf-8",
    )
    done = _ppo(
        tiny_world, tmp_path / "run", "--prompts", str(prompts), "--eval_prompts", str(prompts),
        "--rewards", "align.tiny.reward:tiny_world_reward",
    )  # fmt: skip
    line = one_line_exit_2(done)
    # checked before any model loads: the file, the column and the reward are named
    assert line.startswith(f"error: prompts {prompts}: column 'reference' missing")
    assert "reward function 'tiny_world_reward'" in line
