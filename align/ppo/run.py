"""Build everything a PPO run needs from a :class:`PPOConfig` and run it.

With no model path given (policy, critic, reference) the tiny world (built on first use) fills in
every input the config leaves empty; once one is given, every input is required.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from align.core import distributed, sharded_loading
from align.core.checkpoints import checkpoint_to_resume
from align.core.data import load_records
from align.core.models import check_model_dir, load_options, load_pretrained
from align.core.outputs import check_output_dir
from align.ppo.config import PPOConfig, check_inputs
from align.ppo.trainer import PPOTrainer, make_accelerator, zero3_frozen_offload
from align.tiny.build import build_tiny_world
from rm.functions import LocalRewardModel, WeightedReward, check_reward_columns, rewards_from_config
from rollouts.base import RolloutEngine
from rollouts.factory import engine_options as options_of
from rollouts.factory import make_engine


def _resolve_paths(cfg: PPOConfig) -> dict[str, Path | None]:
    """Model and data paths. With no model path given, the tiny world fills in every one the
    config leaves empty; once one is given, each is required (:func:`check_inputs`)."""
    if not cfg.uses_tiny_world():
        check_inputs(cfg)
        return {
            "policy": Path(cfg.policy),
            "critic": Path(cfg.critic) if cfg.critic and not cfg.critic_from_policy else None,
            "reference": Path(cfg.reference) if cfg.reference else None,
            "prompts": Path(cfg.prompts),
            "eval_prompts": Path(cfg.eval_prompts),
        }
    world, _ = build_tiny_world()
    return {
        "policy": world.policy,
        "critic": None if cfg.critic_from_policy else world.reward,
        "reference": None,
        "prompts": Path(cfg.prompts) if cfg.prompts else world.data("prompts"),
        "eval_prompts": Path(cfg.eval_prompts) if cfg.eval_prompts else world.data("eval_prompts"),
    }


def load_models(paths: dict, cfg: PPOConfig):
    """``(actor, reference, critic, tokenizer)``; safetensors only, no remote code, each in
    ``cfg.dtype`` with ``cfg.attn_implementation``. Every directory is checked before the first
    one loads (one line naming the field if one is bad). Under DeepSpeed ZeRO-3 (the run's
    accelerator exists first) every model loads partitioned: no process holds a whole one.

    The reference is the ``reference`` directory, else the policy directory loaded a second
    time; with LoRA and no ``reference`` it is None (the actor with its adapters disabled), and
    no copy of the base model is made. The critic is the ``critic`` directory, else (with
    ``critic_from_policy``) the policy directory loaded as a one-label sequence classifier: the
    policy's body, whatever its architecture, and a fresh head seeded by ``cfg.seed``."""
    for name in ("policy", "critic", "reference"):
        if paths.get(name) is not None and (name != "critic" or cfg.uses_critic()):
            check_model_dir(paths[name], name)
    tokenizer = AutoTokenizer.from_pretrained(paths["policy"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    options = load_options(cfg.dtype, cfg.attn_implementation)
    actor = load_pretrained(AutoModelForCausalLM, paths["policy"], "policy", **options)
    return actor, load_reference(paths, cfg, options), load_critic(paths, cfg, options), tokenizer


def load_reference(paths: dict, cfg: PPOConfig, options: dict) -> torch.nn.Module | None:
    """The frozen reference (see :func:`load_models`); None under LoRA without ``reference``."""
    if paths.get("reference") is not None:
        return load_pretrained(AutoModelForCausalLM, paths["reference"], "reference", **options)
    if cfg.lora_r:
        return None  # the actor with its adapters disabled
    return load_pretrained(AutoModelForCausalLM, paths["policy"], "policy", **options)


def load_critic(paths: dict, cfg: PPOConfig, options: dict) -> torch.nn.Module | None:
    """The critic (see :func:`load_models`); None for a critic-free ``advantage_estimator``
    (nothing is loaded, a ``critic`` path given is not read). From the policy, transformers
    builds the model's own sequence-classification class and loads the body into it, so no
    attribute name of any architecture is assumed; only the head is new."""
    if not cfg.uses_critic():
        return None
    if paths["critic"] is not None:
        return load_pretrained(
            AutoModelForSequenceClassification, paths["critic"], "critic", num_labels=1, **options
        )
    with torch.random.fork_rng(devices=[]):  # the head's seed, the run's stream untouched
        torch.manual_seed(cfg.seed + 1)
        return load_pretrained(
            AutoModelForSequenceClassification, paths["policy"], "policy", num_labels=1, **options
        )


def prepare_reward_models(
    rewards: list[WeightedReward], accelerator, micro_batch_size: int, offload: bool = False
):
    """Under ZeRO-3 a ``type: model`` reward model loads partitioned and runs inside a frozen
    DeepSpeed engine (TRL's ``prepare_deepspeed``), like the reference; otherwise nothing.
    ``offload`` (``offload_frozen_models``): its partitions stay in CPU memory
    (:func:`~align.ppo.trainer.zero3_frozen_offload`).
    DeepSpeed wants batch sizes in its config before any engine is built (``micro_batch_size``
    here; ``prepare()`` fills in the training engine's later)."""
    if accelerator.distributed_type != "DEEPSPEED" or not sharded_loading.zero3_enabled():
        return
    from trl.models import prepare_deepspeed  # lazy: trl loads peft; DeepSpeed only

    with (
        distributed.batch_sizes_for_frozen_engines(accelerator, micro_batch_size),
        zero3_frozen_offload(accelerator, offload),
    ):
        for reward in rewards:
            if isinstance(reward.fn, LocalRewardModel):
                reward.fn.model = prepare_deepspeed(reward.fn.model, accelerator)


def add_lora(actor, critic, cfg: PPOConfig):
    """LoRA adapters on actor and critic (the critic's scalar head stays fully trainable).

    Under ZeRO-3 the adapters keep the partitioned weights' dtype (PEFT would upcast them to
    float32 next to bf16 weights, and DeepSpeed's ZeRO-3 optimizer needs one dtype), as TRL
    does."""
    from peft import LoraConfig, get_peft_model  # lazy: peft only for LoRA runs

    def lora(task_type: str) -> LoraConfig:
        return LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,
            task_type=task_type,
        )

    keep_dtype = {"autocast_adapter_dtype": False} if sharded_loading.zero3_enabled() else {}
    return (
        get_peft_model(actor, lora("CAUSAL_LM"), **keep_dtype),
        None if critic is None else get_peft_model(critic, lora("SEQ_CLS"), **keep_dtype),
    )


def engine_options(cfg: PPOConfig) -> dict:
    """The factory options of ``cfg.rollout.engine`` (:func:`rollouts.factory.engine_options`;
    an unset vLLM seed is the run's seed)."""
    return options_of(cfg.rollout, cfg.seed)


def build_engine(
    cfg: PPOConfig, actor: torch.nn.Module, tokenizer, policy_path: Path, accelerator=None
):
    """``hf`` generates with the live actor; vLLM engines load the policy directory (the actor's
    starting weights) and follow the actor through weight sync. ``rollout.vllm.dtype: auto``
    means the actor's dtype: vLLM's own "auto" may pick bfloat16 for a float32 checkpoint, and the
    sampling logprobs would then drift from the trainer's (the logged gap shows it).

    With several training processes, ``vllm`` runs one engine in each process and
    ``vllm-server`` sends every process's prompts to one server (one that is running, or one the
    main process starts). ``accelerator``: the run's (made here when several processes need
    one and none is given)."""
    engine = cfg.rollout.engine
    if engine == "hf":
        return make_engine("hf", actor, tokenizer, **engine_options(cfg))
    options = engine_options(cfg)
    if options.get("dtype") == "auto":
        options["dtype"] = str(next(actor.parameters()).dtype).removeprefix("torch.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # the trainer's process group first: vLLM's external launcher joins it, and a server's
        # URL travels over it
        accelerator = accelerator or make_accelerator(cfg)
        if engine == "vllm-server" and not options.get("url"):
            return _server_for_every_process(accelerator, cfg, tokenizer, policy_path, options)
    return make_engine(engine, policy_path, tokenizer, **options)


def _server_for_every_process(
    accelerator, cfg: PPOConfig, tokenizer, policy_path: Path, options: dict
):
    """The main process starts the server; the others connect to the URL it broadcasts."""
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
                       timeout_s=cfg.rollout.server.timeout_s)  # fmt: skip


def check_paths(cfg: PPOConfig) -> None:
    """What can be checked before anything is built or loaded: ``output_dir`` takes writes, and
    every model directory the config names holds a config and safetensors weights, and a
    config with a model path leaves no input empty (:func:`check_inputs`). Each failure is one
    line naming the field (and the path)."""
    check_inputs(cfg)
    check_output_dir(cfg.output_dir, "output_dir")
    for name in ("policy", "critic", "reference"):
        unused = name == "critic" and (cfg.critic_from_policy or not cfg.uses_critic())
        if getattr(cfg, name) and not unused:
            check_model_dir(getattr(cfg, name), name)


def load_prompts(path: Path, field: str, default_category: str | None = None) -> list[dict]:
    """The prompt records of ``path``; ValueError naming ``field`` and the file when it has
    none (training has nothing to sample, evaluation would be skipped silently)."""
    rows = load_records(path, "prompts", default_category).to_list()
    if not rows:
        raise ValueError(f"{field}: {path} has no prompt records (the file is empty)")
    return rows


def build_trainer(cfg: PPOConfig, engine: RolloutEngine | None = None) -> PPOTrainer:
    """Everything from the config; ``engine`` replaces the one ``cfg.rollout.engine`` names."""
    check_paths(cfg)
    resume = checkpoint_to_resume(cfg.output_dir, cfg.resume_from, "PPO", "trainer_state.pt")
    torch.manual_seed(cfg.seed)
    paths = _resolve_paths(cfg)
    prompts = load_prompts(paths["prompts"], "prompts", cfg.default_category)
    eval_prompts = load_prompts(paths["eval_prompts"], "eval_prompts", cfg.default_category)
    # before any model loads: under DeepSpeed ZeRO-3 every model then loads partitioned
    accelerator = make_accelerator(cfg)
    options = load_options(cfg.dtype, cfg.attn_implementation)
    rewards = rewards_from_config(cfg.rewards, model_options=options)
    # before the policy loads or anything is sampled
    for field, rows in (("prompts", prompts), ("eval_prompts", eval_prompts)):
        check_reward_columns(rewards, rows, f"{field} {paths[field]}")
    prepare_reward_models(rewards, accelerator, cfg.micro_batch_size, cfg.offload_frozen_models)
    actor, reference, critic, tokenizer = load_models(paths, cfg)
    if cfg.lora_r:
        actor, critic = add_lora(actor, critic, cfg)
    engine = engine or build_engine(cfg, actor, tokenizer, paths["policy"], accelerator)
    trainer = PPOTrainer(
        cfg,
        actor,
        reference,
        critic,
        tokenizer,
        rewards,
        prompts,
        engine,
        eval_prompts,
        accelerator=accelerator,
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
