"""The accelerate set-up every trainer shares, CPU-only machines included.

Launched as several processes (``accelerate launch``, torchrun) on a machine without CUDA,
accelerate falls back to a non-distributed state in every process: each one believes it is
rank 0 of 1 and trains alone. Plain DDP needs ``cpu=True`` (a gloo process group, MULTI_CPU);
DeepSpeed keeps its own state and needs the gloo backend named explicitly. When no dataloader
goes through ``prepare()``, DeepSpeed also needs ``train_micro_batch_size_per_gpu`` set in its
config before ``prepare()`` (:func:`configure_deepspeed`).

Used by PPO and pretraining (:func:`make_accelerator`) and by the TRL-based UFRM trainer
(:func:`plain_ddp_without_cuda` decides its ``use_cpu``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def deepspeed_launch() -> bool:
    """Whether ``accelerate launch`` was given a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def launched_without_cuda() -> bool:
    """Several launched processes on a machine without CUDA."""
    return launched_processes() > 1 and not torch.cuda.is_available()


def plain_ddp_without_cuda() -> bool:
    """Several launched plain-DDP processes without CUDA: accelerate must be told ``cpu=True``
    (TRL: ``use_cpu``); DeepSpeed sets up its own process group and is left alone."""
    return launched_without_cuda() and not deepspeed_launch()


def make_accelerator(**kwargs):
    """``accelerate.Accelerator(**kwargs)`` that also runs several processes on a CPU-only
    machine: ``cpu=True`` for plain DDP, the gloo backend for DeepSpeed."""
    if launched_without_cuda():
        if deepspeed_launch():
            handlers = list(kwargs.get("kwargs_handlers") or [])
            kwargs["kwargs_handlers"] = [*handlers, InitProcessGroupKwargs(backend="gloo")]
        else:
            kwargs["cpu"] = True
    return Accelerator(**kwargs)


def configure_deepspeed(accelerator, micro_batch_size: int, **settings) -> None:
    """Under DeepSpeed, set ``train_micro_batch_size_per_gpu`` and any other ``settings``
    (``gradient_clipping``, ``gradient_accumulation_steps``, ...) in its config; call before
    ``prepare()``. No-op otherwise."""
    if accelerator.distributed_type != "DEEPSPEED":
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config.update(settings)


#: The batch sizes DeepSpeed checks when it builds an engine (``auto`` until ``prepare()``).
BATCH_KEYS = ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps")


@contextmanager
def batch_sizes_for_frozen_engines(accelerator, micro_batch_size: int) -> Iterator[None]:
    """Concrete batch sizes in the DeepSpeed config while frozen engines (TRL's
    ``prepare_deepspeed``) are built before ``prepare()``, which fills its ``auto`` values
    itself; the config is as it was afterwards. No-op without DeepSpeed."""
    if accelerator.distributed_type != "DEEPSPEED":
        yield
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    saved = {k: config[k] for k in BATCH_KEYS if k in config}
    config.update(
        train_micro_batch_size_per_gpu=micro_batch_size,
        train_batch_size=micro_batch_size * accelerator.num_processes,
        gradient_accumulation_steps=1,
    )
    try:
        yield
    finally:
        for key in BATCH_KEYS:
            config.pop(key, None)
        config.update(saved)
