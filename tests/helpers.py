"""Small builders shared by several test files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

#: Bearer token of the test reward server (``reward_server`` fixture).
TOKEN = "test-token-0123"

#: accelerate config of the 2-process ZeRO-3 CPU launches, fp32 (no mixed precision).
ZERO3_FP32 = """\
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  zero_stage: 3
  offload_optimizer_device: none
  offload_param_device: none
  gradient_accumulation_steps: 1
  zero3_init_flag: true
  zero3_save_16bit_model: true
mixed_precision: 'no'
num_machines: 1
num_processes: 2
machine_rank: 0
rdzv_backend: static
same_network: true
use_cpu: false
"""


def random_reward_model(tokenizer, pad_token_id: int | None = None):
    """A tiny seeded ``LlamaForSequenceClassification`` (one label) for ``tokenizer``'s vocab."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tokenizer.pad_token_id if pad_token_id is None else pad_token_id,
    )
    config.num_labels = 1
    return AutoModelForSequenceClassification.from_config(config).eval()


def teacher_forced_logprobs(model, prompt, completion, temperature):
    """Slow oracle: one unpadded forward of prompt+completion, log_softmax(logits / T)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].float()
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
    return logprobs[positions, torch.tensor(completion)]


def chat_prompt_ids(world, tokenizer, n: int) -> list[list[int]]:
    """The first ``n`` held-out tiny-world prompts, chat-formatted and tokenized."""
    from align.core.data import load_records, messages_of

    rows = load_records(world.data("eval_prompts"), "prompts").to_list()[:n]
    return [
        tokenizer.apply_chat_template(messages_of(r), add_generation_prompt=True)["input_ids"]
        for r in rows
    ]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, proc: subprocess.Popen, log_path: str, seconds: float = 90) -> None:
    """Wait until ``base/health`` answers; an error naming the log if ``proc`` exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"reward server exited with {proc.returncode} (log: {log_path})")
        try:
            urllib.request.urlopen(base + "/health", timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"reward server at {base} did not come up in {seconds} s")


def raw_post(url: str, body: bytes, token: str | None = TOKEN) -> tuple[int, dict]:
    """``(status, decoded JSON answer)`` of POSTing ``body`` (with the bearer ``token``)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def start_reward_server(model: Path, log_path: Path, args: list[str], env: dict) -> tuple:
    """``align rm serve --model MODEL ARGS`` on a free loopback port, logging to ``log_path``;
    ``(base URL, stop)`` once it answers ``/health`` (``stop()`` ends it, killing if it must)."""
    port = free_port()
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "align.cli", "rm", "serve", "--model", str(model),
         "--port", str(port), *args],
        env={**env, "HF_HUB_OFFLINE": "1"}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, log.name, seconds=120)
    except BaseException:
        stop()
        raise
    return base, stop


def environment_without(*names: str) -> dict:
    """``os.environ`` without ``names``."""
    return {k: v for k, v in os.environ.items() if k not in names}
