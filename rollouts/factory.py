"""Pick a rollout engine by name: ``hf``, ``vllm`` or ``vllm-server``.

``make_engine(kind, model_or_path, tokenizer, **options)``:

- ``hf`` — transformers ``generate`` on a module or a model directory. Options: ``batch_size``.
- ``vllm`` — a colocated ``vllm.LLM`` on a model directory (or a module, saved to a temporary
  directory first). Options: the fields of :class:`~rollouts.vllm_engine.VLLMOptions`
  (``gpu_memory_utilization``, ``tensor_parallel_size``, ``max_model_len``, ``dtype``,
  ``enable_sleep_mode``, ``kv_cache_memory_bytes``, ``seed``, ``enforce_eager``).
- ``vllm-server`` — a vLLM OpenAI-compatible server: ``url=`` one that is running, or none to
  start one on 127.0.0.1 on the model directory (stopped by the engine's ``close()``). Options: the
  fields of :class:`~rollouts.vllm_server.ServerOptions` (``url``, ``timeout_s``, ``max_retries``,
  ``retry_backoff_s``, ``startup_timeout_s``, ``weight_sync``, ``sync_address``, ``sync_port``,
  ``server_workers``, ``weights_dir``) and, when starting one, the ``vllm`` options above.

Unknown options raise ``ValueError`` naming them. Commands build engines from their typed
:class:`~rollouts.config.RolloutConfig` with :func:`engine_from_config`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from rollouts.base import RolloutEngine
from rollouts.config import ENGINES, WEIGHT_SYNC, RolloutConfig, ServerOptions, VLLMOptions
from rollouts.hf_generate import GenerateEngine
from rollouts.vllm_engine import VLLMEngine, eos_ids_of
from rollouts.vllm_server import VLLMServerEngine

__all__ = ["ENGINES", "WEIGHT_SYNC", "engine_from_config", "engine_options", "make_engine"]


def _split_options(options: dict, *classes: type) -> list[dict]:
    """``options`` divided among dataclasses by field name; leftovers are an error."""
    parts, left = [], dict(options)
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)}
        parts.append({k: left.pop(k) for k in list(left) if k in names})
    if left:
        raise ValueError(
            f"unknown engine options {sorted(left)} for {[c.__name__ for c in classes]}"
        )
    return parts


def _load_model(path: str | Path) -> torch.nn.Module:
    if not Path(path, "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()


def _hf(model_or_path, tokenizer, **options) -> RolloutEngine:
    batch_size = options.pop("batch_size", None)
    if options:
        raise ValueError(f"unknown engine options {sorted(options)} for hf (only batch_size)")

    model = (
        model_or_path if isinstance(model_or_path, torch.nn.Module) else _load_model(model_or_path)
    )
    return GenerateEngine.from_tokenizer(model, tokenizer, batch_size=batch_size)


def _vllm(model_or_path, tokenizer, **options) -> RolloutEngine:
    (vllm_options,) = _split_options(options, VLLMOptions)
    opts = VLLMOptions(**vllm_options)
    if isinstance(model_or_path, torch.nn.Module):
        return VLLMEngine.from_model(model_or_path, tokenizer, opts)
    return VLLMEngine(model_or_path, eos_ids_of(tokenizer), opts)


def _vllm_server(model_or_path, tokenizer, **options) -> RolloutEngine:
    server_options, vllm_options = _split_options(options, ServerOptions, VLLMOptions)
    opts = ServerOptions(**server_options)
    if opts.url is not None:
        if vllm_options:
            raise ValueError(f"engine options {sorted(vllm_options)} need a server align starts")
        return VLLMServerEngine(opts, eos_ids_of(tokenizer))
    return VLLMServerEngine.launch(model_or_path, tokenizer, opts, VLLMOptions(**vllm_options))


_BUILDERS = {"hf": _hf, "vllm": _vllm, "vllm-server": _vllm_server}


def make_engine(kind: str, model_or_path, tokenizer, **options) -> RolloutEngine:
    """A ready :class:`~rollouts.base.RolloutEngine` of ``kind`` (see the module docstring)."""
    if kind not in _BUILDERS:
        raise ValueError(f"engine: expected one of {', '.join(ENGINES)}, got {kind!r}")
    return _BUILDERS[kind](model_or_path, tokenizer, **options)


def engine_options(rollout: RolloutConfig, seed: int) -> dict:
    """The :func:`make_engine` options of ``rollout.engine`` from its typed config (a vLLM seed
    left unset is ``seed``)."""
    if rollout.engine == "hf":
        return dataclasses.asdict(rollout.hf)
    vllm = dataclasses.asdict(rollout.vllm)
    vllm["seed"] = seed if vllm["seed"] is None else vllm["seed"]
    if rollout.engine == "vllm":
        return vllm
    server = {k: v for k, v in dataclasses.asdict(rollout.server).items() if v is not None}
    return server if rollout.server.url else {**vllm, **server}


def engine_from_config(
    rollout: RolloutConfig, model_or_path, tokenizer, seed: int, **changes
) -> RolloutEngine:
    """The engine ``rollout`` describes; ``changes`` replace options (e.g. a resolved dtype)."""
    return make_engine(
        rollout.engine, model_or_path, tokenizer, **{**engine_options(rollout, seed), **changes}
    )
