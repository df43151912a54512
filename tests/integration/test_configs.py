"""Shipped configuration files parse with the tools that read them."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["cpu.yaml", "ddp.yaml", "zero2.yaml", "zero3.yaml"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "recipes" / "accelerate_configs" / name))
    assert config.num_machines == 1
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[4])


@pytest.mark.parametrize("name", ["ppo_tiny.yaml", "ppo_7b_zero3.yaml", "ppo_70b_lora_zero3.yaml"])
def test_ppo_recipe_configs_parse(name):
    from align.ppo.config import PPOConfig

    cfg = PPOConfig.from_sources(ROOT / "recipes" / "configs" / name)
    assert cfg.total_steps >= 1 and isinstance(cfg.actor_lr, float)


@pytest.mark.parametrize("name", ["ppo_7b_zero3.yaml", "ppo_70b_lora_zero3.yaml"])
def test_big_ppo_configs_use_vllm_bf16_and_checkpointing(name):
    """What makes them run at their size: bf16 weights, recomputed activations, vLLM rollouts
    (one engine per process with sleep mode at 7B; at 70B, whose bf16 replica fits no single
    GPU, a tensor-parallel server on its own node, synced by NCCL)."""
    from align.ppo.config import PPOConfig

    cfg = PPOConfig.from_sources(ROOT / "recipes" / "configs" / name)
    assert cfg.dtype == "bfloat16" and cfg.gradient_checkpointing
    rollout, vllm = cfg.rollout, cfg.rollout.vllm
    if rollout.engine == "vllm":
        assert vllm.enable_sleep_mode and vllm.tensor_parallel_size == 1
        assert 0.2 <= vllm.gpu_memory_utilization <= 0.5
        assert vllm.max_model_len >= cfg.max_prompt_length + cfg.max_new_tokens
    else:
        assert rollout.engine == "vllm-server" and rollout.server.url
        assert rollout.server.server_workers == 8 and rollout.server.weight_sync == "nccl"


def test_pei_7b_config_rounds_use_the_7b_ppo_config():
    from align.pei.run import PEIConfig

    cfg = PEIConfig.from_sources(ROOT / "recipes" / "configs" / "pei_7b_zero3.yaml")
    assert cfg.ppo.rollout.engine == "vllm" and cfg.ppo.dtype == "bfloat16"


def test_ufrm_7b_config_parses():
    from rm.ufrm import UFRMConfig

    cfg = UFRMConfig.from_sources(ROOT / "recipes" / "configs" / "ufrm_7b_zero3.yaml")
    assert cfg.stage2_data and cfg.gradient_checkpointing and cfg.max_length == 2048
    assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * 8 == 64
