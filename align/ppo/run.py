"""Build everything a PPO run needs from a :class:`PPOConfig` and run it.

With no model or data paths the tiny world is used (built on first use).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch

from align.core.checkpoints import checkpoint_to_resume
from align.core.data import load_records
from align.ppo.config import PPOConfig
from align.ppo.trainer import PPOTrainer
from rm.functions import rewards_from_config
from rollouts.base import RolloutEngine


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
        "reference": Path(cfg.reference) if cfg.reference else None,
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
    reference = (
        AutoModelForCausalLM.from_pretrained(paths["reference"], use_safetensors=True)
        if paths.get("reference")
        else copy.deepcopy(actor)
    )
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


def engine_options(cfg: PPOConfig) -> dict:
    """The factory options of ``cfg.rollout_engine`` from the flat ``vllm_*`` fields."""
    if cfg.rollout_engine == "hf":
        return {"batch_size": 64}
    server = {
        "timeout_s": cfg.vllm_server_timeout_s,
        "weight_sync": cfg.vllm_server_weight_sync,
        "sync_address": cfg.vllm_server_sync_address,
        "server_workers": cfg.vllm_server_workers,
    }
    if cfg.rollout_engine == "vllm-server" and cfg.vllm_server_url:
        return {"url": cfg.vllm_server_url, **server}
    options = {
        "gpu_memory_utilization": cfg.vllm_gpu_memory_utilization,
        "tensor_parallel_size": cfg.vllm_tensor_parallel_size,
        "max_model_len": cfg.vllm_max_model_len,
        "dtype": cfg.vllm_dtype,
        "enable_sleep_mode": cfg.vllm_sleep_mode,
        "kv_cache_memory_bytes": cfg.vllm_kv_cache_bytes,
        "seed": cfg.seed,
    }
    if cfg.rollout_engine == "vllm-server":
        options.update(server)
    return options


def build_engine(cfg: PPOConfig, actor: torch.nn.Module, tokenizer, policy_path: Path):
    """``hf`` generates with the live actor; vLLM engines load the policy directory (the actor's
    starting weights) and follow the actor through weight sync. ``vllm_dtype: auto`` means the
    actor's dtype: vLLM's own "auto" may pick bfloat16 for a float32 checkpoint, and the
    sampling logprobs would then drift from the trainer's (the logged gap shows it).

    With several training processes, ``vllm`` runs one engine in each process and
    ``vllm-server`` sends every process's prompts to one server (one that is running, or one the
    main process starts)."""
    import os

    from rollouts.factory import make_engine

    if cfg.rollout_engine == "hf":
        return make_engine("hf", actor, tokenizer, **engine_options(cfg))
    options = engine_options(cfg)
    if options.get("dtype") == "auto":
        options["dtype"] = str(next(actor.parameters()).dtype).removeprefix("torch.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from align.ppo.trainer import make_accelerator

        # the trainer's process group first: vLLM's external launcher joins it, and a server's
        # URL travels over it
        accelerator = make_accelerator(cfg)
        if cfg.rollout_engine == "vllm-server" and "url" not in options:
            return _server_for_every_process(accelerator, cfg, tokenizer, policy_path, options)
    return make_engine(cfg.rollout_engine, policy_path, tokenizer, **options)


def _server_for_every_process(
    accelerator, cfg: PPOConfig, tokenizer, policy_path: Path, options: dict
):
    """The main process starts the server; the others connect to the URL it broadcasts."""
    from accelerate.utils import broadcast_object_list

    from rollouts.factory import make_engine

    engine, url = None, [None]
    try:
        if accelerator.is_main_process:
            engine = make_engine("vllm-server", policy_path, tokenizer, **options)
            url = [engine.url]
    finally:
        broadcast_object_list(url)  # also when starting failed: nobody waits forever
    if engine is not None:
        return engine
    if url[0] is None:
        raise RuntimeError("the main process could not start the vLLM server (see its error)")
    return make_engine("vllm-server", policy_path, tokenizer, url=url[0],
                       timeout_s=cfg.vllm_server_timeout_s)  # fmt: skip


def build_trainer(cfg: PPOConfig, engine: RolloutEngine | None = None) -> PPOTrainer:
    """Everything from the config; ``engine`` replaces the one ``cfg.rollout_engine`` names."""
    resume = checkpoint_to_resume(cfg.output_dir, cfg.resume_from, "PPO", "trainer_state.pt")
    torch.manual_seed(cfg.seed)
    paths = _resolve_paths(cfg)
    prompts = load_records(paths["prompts"], "prompts").to_list()
    eval_prompts = load_records(paths["eval_prompts"], "prompts").to_list()
    actor, reference, critic, tokenizer = load_models(paths, cfg.seed)
    if cfg.lora_r:
        actor, critic = add_lora(actor, critic, cfg)
        if not cfg.reference:  # the actor with its adapters disabled
            reference = None
    engine = engine or build_engine(cfg, actor, tokenizer, paths["policy"])
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
    if resume is not None:
        trainer.load_checkpoint(resume)
    return trainer


def run_ppo(cfg: PPOConfig, progress: Callable[[int, dict], None] = lambda s, m: None) -> dict:
    """Build and train; returns the last step's metrics. A vLLM engine (and a server it
    started) is closed at the end."""
    trainer = build_trainer(cfg)
    try:
        return trainer.train(progress)
    finally:
        close_engine(trainer)


def close_engine(trainer: PPOTrainer) -> None:
    """Release a vLLM engine (and stop a server it started); the hf engine has nothing to close."""
    close = getattr(trainer.engine, "close", None)
    if close is not None:
        close()
