"""Build everything a PPO run needs from a :class:`PPOConfig` and run it.

With no model or data paths the tiny world is used (built on first use).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch

from align.data import load_records
from align.ppo import PPOTrainer, latest_checkpoint
from align.ppo_config import PPOConfig
from rm.functions import rewards_from_config


def _resolve_paths(cfg: PPOConfig) -> dict[str, Path | None]:
    """Model and data paths, the tiny world filling in whatever the config leaves empty."""
    needs_tiny = None in (cfg.policy, cfg.prompts, cfg.eval_prompts) or (
        cfg.critic is None and not cfg.critic_from_policy
    )
    world = None
    if needs_tiny:
        from align.tiny.build import build_tiny_world

        world, _ = build_tiny_world()
    return {
        "policy": Path(cfg.policy) if cfg.policy else world.policy,
        "critic": None
        if cfg.critic_from_policy
        else Path(cfg.critic)
        if cfg.critic
        else world.reward,
        "prompts": Path(cfg.prompts) if cfg.prompts else world.data("prompts"),
        "eval_prompts": Path(cfg.eval_prompts) if cfg.eval_prompts else world.data("eval_prompts"),
    }


def load_models(paths: dict, seed: int):
    """``(actor, reference, critic, tokenizer)``; safetensors only, no remote code."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths["policy"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    actor = AutoModelForCausalLM.from_pretrained(paths["policy"], use_safetensors=True)
    reference = copy.deepcopy(actor)
    if paths["critic"] is not None:
        critic = AutoModelForSequenceClassification.from_pretrained(
            paths["critic"], num_labels=1, use_safetensors=True
        )
    else:
        from align.tiny.build import make_reward_backbone

        critic = make_reward_backbone(actor, seed)
    return actor, reference, critic, tokenizer


def add_lora(actor, critic, cfg: PPOConfig):
    """LoRA adapters on actor and critic (the critic's scalar head stays fully trainable)."""
    from peft import LoraConfig, get_peft_model

    def lora(task_type: str) -> LoraConfig:
        return LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,
            task_type=task_type,
        )

    return get_peft_model(actor, lora("CAUSAL_LM")), get_peft_model(critic, lora("SEQ_CLS"))


def build_trainer(cfg: PPOConfig) -> PPOTrainer:
    from rollouts.hf_generate import GenerateEngine

    torch.manual_seed(cfg.seed)
    paths = _resolve_paths(cfg)
    prompts = load_records(paths["prompts"], "prompts").to_list()
    eval_prompts = load_records(paths["eval_prompts"], "prompts").to_list()
    actor, reference, critic, tokenizer = load_models(paths, cfg.seed)
    if cfg.lora_r:
        actor, critic = add_lora(actor, critic, cfg)
        reference = None
    engine = GenerateEngine.from_tokenizer(actor, tokenizer, batch_size=64)
    trainer = PPOTrainer(
        cfg,
        actor,
        reference,
        critic,
        tokenizer,
        rewards_from_config(cfg.rewards),
        prompts,
        engine,
        eval_prompts,
    )
    if cfg.resume_from:
        resume = (
            latest_checkpoint(cfg.output_dir)
            if cfg.resume_from == "latest"
            else Path(cfg.resume_from)
        )
        trainer.load_checkpoint(resume)
    return trainer


def run_ppo(cfg: PPOConfig, progress: Callable[[int, dict], None] = lambda s, m: None) -> dict:
    """Build and train; returns the last step's metrics."""
    return build_trainer(cfg).train(progress)
