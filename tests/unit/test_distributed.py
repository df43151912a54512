"""The shared accelerate set-up (:mod:`align.core.distributed`): when processes launched on a
machine without CUDA need a gloo group, and the DeepSpeed settings made before ``prepare()``.
Launched runs: tests/integration/test_ppo_distributed.py and test_ufrm_distributed.py."""

from __future__ import annotations

import pytest
import torch

from align.core import distributed


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only decisions")
@pytest.mark.parametrize(
    "world, deepspeed, without_cuda, plain_ddp",
    [(None, None, False, False), ("1", None, False, False), ("2", None, True, True),
     ("2", "true", True, False), ("4", "False", True, True)],
)  # fmt: skip
def test_cpu_launch_decisions(monkeypatch, world, deepspeed, without_cuda, plain_ddp):
    for name, value in (("WORLD_SIZE", world), ("ACCELERATE_USE_DEEPSPEED", deepspeed)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert distributed.launched_without_cuda() is without_cuda
    assert distributed.plain_ddp_without_cuda() is plain_ddp
    assert distributed.launched_processes() == int(world or 1)


def test_single_process_accelerator_and_no_deepspeed_settings(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    accelerator = distributed.make_accelerator()
    assert accelerator.num_processes == 1 and accelerator.distributed_type == "NO"
    distributed.configure_deepspeed(accelerator, 4, gradient_clipping=1.0)  # not DeepSpeed
    assert accelerator.state.deepspeed_plugin is None
