"""Rollout settings, one typed config shared by every command that samples (``align ppo``,
``align filter``, PEI's re-filtering): the engine, how often weights reach it, and the options of
each engine (``rollout.hf``, ``rollout.vllm``, ``rollout.server``).

On the command line: ``--rollout.engine vllm --rollout.vllm.dtype bfloat16
--rollout.server.url http://host:8000``. Built into an engine by
:func:`rollouts.factory.engine_from_config`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

from align.core.config import check_literals, check_ranges, help_field

ENGINES = ("hf", "vllm", "vllm-server")
WEIGHT_SYNC = ("auto", "nccl", "gloo", "file")  # how a vllm-server engine receives weights
VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")

# On the CPU backend ``gpu_memory_utilization`` is a fraction of *host* memory; a shared box
# cannot spare 30% of it, so without CUDA the KV cache gets this fixed size unless one is given.
CPU_KV_CACHE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class HFOptions:
    """transformers ``generate`` (the ``hf`` engine)."""

    batch_size: int | None = help_field(
        "Prompts per generate() call (memory bound); none = every prompt of a call at once.",
        64,
        ge=1,
    )

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class VLLMOptions:
    """A vLLM engine: colocated in the training process(es) (``vllm``), or the server align
    starts (``vllm-server`` without a URL)."""

    gpu_memory_utilization: float = help_field(
        "GPU memory fraction for weights + KV cache (colocated with training).", 0.3, gt=0, le=1
    )
    tensor_parallel_size: int = help_field("Tensor parallel size.", 1, ge=1)
    max_model_len: int | None = help_field("Context length; none = the model's.", None, ge=2)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = help_field(
        "Weights dtype: auto (in PPO, the actor's dtype), float32, bfloat16 or float16.", "auto"
    )
    enable_sleep_mode: bool = help_field(
        "Release weights and KV cache between rollouts (needs a CUDA GPU).", False
    )
    kv_cache_memory_bytes: int | None = help_field(
        "Explicit KV cache size in bytes; none = from the memory fraction on GPU, 512 MiB on CPU "
        "(where the fraction would be of host memory).",
        None,
        ge=1,
    )
    seed: int | None = help_field("vLLM's seed; none = the command's seed.", None)
    enforce_eager: bool | None = help_field(
        "No CUDA graphs; none = true on CPU (vLLM's CPU backend needs it), false on GPU.", None
    )

    def __post_init__(self) -> None:
        check_ranges(self)
        check_literals(self)

    def llm_kwargs(self) -> dict:
        """Keyword arguments of ``vllm.LLM`` besides the model."""
        from rollouts.vllm_logprobs import LOGPROBS_MODE, PROCESSOR  # lazy: imports vllm

        cuda = torch.cuda.is_available()
        if self.enable_sleep_mode and not cuda:
            raise ValueError("enable_sleep_mode: vLLM's sleep mode needs a CUDA GPU")
        return {
            "dtype": self.dtype,
            "seed": 0 if self.seed is None else self.seed,
            "tensor_parallel_size": self.tensor_parallel_size,
            "max_model_len": self.max_model_len,
            "enable_sleep_mode": self.enable_sleep_mode,
            "enforce_eager": (not cuda) if self.enforce_eager is None else self.enforce_eager,
            "logprobs_mode": LOGPROBS_MODE,
            "logits_processors": [PROCESSOR],
            "generation_config": "vllm",  # the checkpoint's sampling defaults never apply
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "kv_cache_memory_bytes": self.kv_cache_memory_bytes
            or (None if cuda else CPU_KV_CACHE_BYTES),
        }

    def colocated_kwargs(self) -> dict:
        """:meth:`llm_kwargs` for an engine inside the training process(es): with several
        training processes each one runs its own replica of the engine in its own process
        (vLLM's ``external_launcher``); alone, a tensor-parallel engine starts its workers."""
        from rollouts.vllm_worker_ext import EXTENSION  # lazy: imports vllm

        kwargs = {**self.llm_kwargs(), "worker_extension_cls": EXTENSION}
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        if processes > 1:
            if self.tensor_parallel_size > 1:
                raise ValueError(
                    "tensor_parallel_size > 1 for a vLLM engine inside several training "
                    "processes is not supported; use one engine per process "
                    "(tensor_parallel_size: 1) or a vLLM server with tensor parallelism"
                )
            kwargs["distributed_executor_backend"] = "external_launcher"
        return kwargs


@dataclass(frozen=True)
class ServerOptions:
    """A vLLM OpenAI-compatible server (the ``vllm-server`` engine): one that is running
    (``url``), or one align starts on 127.0.0.1 with the ``rollout.vllm`` options."""

    url: str | None = help_field(
        "URL of a running server (http(s)://host:port); none = start one on 127.0.0.1.", None
    )
    timeout_s: float = help_field("Per-request timeout in seconds.", 300.0, gt=0)
    max_retries: int = help_field("Retries of a failed request (connection errors, 5xx).", 2, ge=0)
    retry_backoff_s: float = help_field("Seconds before the first retry (doubling).", 1.0, ge=0)
    startup_timeout_s: float = help_field(
        "Seconds a server align starts may take to answer /health.", 300.0, gt=0
    )
    weight_sync: Literal["auto", "nccl", "gloo", "file"] = help_field(
        "How weights reach the server: auto (nccl with a GPU, else gloo), nccl, gloo "
        "(process-group broadcast, any host) or file (safetensors file, same host only).",
        "auto",
    )
    sync_address: str = help_field(
        "Address at which the server's workers reach this trainer for the broadcast (the "
        "trainer's own address when the server runs elsewhere).",
        "127.0.0.1",
    )
    sync_port: int | None = help_field(
        "Port of the weight broadcast; none = a free port.", None, ge=1, le=65535
    )
    server_workers: int | None = help_field(
        "Worker processes of a running server (tensor × pipeline × data parallel); none = 1, or "
        "the tensor parallel size of a server align starts.",
        None,
        ge=1,
    )
    weights_dir: str | None = help_field(
        "weight_sync file: folder for the weights file (seen by the server); none = a temporary "
        "folder.",
        None,
    )

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected http(s)://host:port, got {self.url!r}")
        check_ranges(self)
        check_literals(self)


@dataclass(frozen=True)
class RolloutConfig:
    """Which engine samples the rollouts and its options."""

    engine: Literal["hf", "vllm", "vllm-server"] = help_field(
        "Rollout engine: hf (transformers generate), vllm (colocated vllm.LLM) or vllm-server "
        "(an OpenAI-compatible vLLM server).",
        "hf",
    )
    sync_every: int = help_field(
        "Copy the actor's weights into a vLLM engine every N PPO steps (1 = before every "
        "rollout); the hf engine always generates with the live actor.",
        1,
        ge=1,
    )
    hf: HFOptions = help_field("Options of the hf engine.", factory=HFOptions)
    vllm: VLLMOptions = help_field(
        "Options of a colocated vLLM engine or of the server align starts.", factory=VLLMOptions
    )
    server: ServerOptions = help_field("Options of the vllm-server engine.", factory=ServerOptions)

    def __post_init__(self) -> None:
        check_ranges(self)
        check_literals(self)
        if self.engine == "vllm-server" and self.server.url and self.vllm != VLLMOptions():
            raise ValueError(
                "vllm: options of a server align starts; with server.url the running server's "
                "own settings apply (leave rollout.vllm out)"
            )
