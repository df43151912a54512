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
