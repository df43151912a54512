"""``PPOConfig``: every knob of ``align ppo``, with its default, range and help. Read from YAML
plus ``--field value`` overrides by :func:`align.core.config.load_config` (``--beta 0.1``,
``--rollout.vllm.dtype bfloat16``, ``--category_weights '{金融计算: 2}'``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from align.core.config import (
    build,
    check_ranges,
    config_to_yaml,
    load_config,
    missing_inputs_error,
)
from align.core.config import help_field as _help
from align.core.core_algos import ADVANTAGE_ESTIMATORS, LOSS_AGG_MODES
from align.core.tracking import check_report_to, project_field, report_to_field, run_name_field
from align.ppo.online_filter import OnlineFilterConfig
from rm.spec import REWARDS_EXPECTED, TINY_REWARD, RewardSpec, as_specs, tiny_reward
from rollouts.config import RolloutConfig

__all__ = ["OLD_SPELLINGS", "PPOConfig", "TINY_REWARD", "check_inputs", "missing_inputs"]

#: Old spellings of PPOConfig fields, still read (with a warning, once each).
OLD_SPELLINGS = {
    "rollout_engine": "rollout.engine",
    "sync_every": "rollout.sync_every",
    "vllm_gpu_memory_utilization": "rollout.vllm.gpu_memory_utilization",
    "vllm_tensor_parallel_size": "rollout.vllm.tensor_parallel_size",
    "vllm_max_model_len": "rollout.vllm.max_model_len",
    "vllm_dtype": "rollout.vllm.dtype",
    "vllm_sleep_mode": "rollout.vllm.enable_sleep_mode",
    "vllm_kv_cache_bytes": "rollout.vllm.kv_cache_memory_bytes",
    "vllm_server_url": "rollout.server.url",
    "vllm_server_timeout_s": "rollout.server.timeout_s",
    "vllm_server_weight_sync": "rollout.server.weight_sync",
    "vllm_server_sync_address": "rollout.server.sync_address",
    "vllm_server_workers": "rollout.server.server_workers",
    "vllm": "rollout.vllm",
    "resume_from_checkpoint": "resume_from",
}


@dataclass
class PPOConfig:
    """PPO with actor, reference, critic and reward functions (docs/methods.md §1). ``[S]`` marks
    values the XuanYuan reports state; the others are our defaults."""

    config_name: ClassVar[str] = "ppo"  # --config tiny → align/configs/ppo_tiny.yaml
    #: The shipped config a command line with no model path and no --config starts from.
    config_tiny_base: ClassVar[str] = "tiny"
    config_renames: ClassVar[dict[str, str]] = OLD_SPELLINGS

    # models and data
    policy: str | None = _help(
        "SFT policy directory. None (and no critic or reference either) = the tiny world, which "
        "then fills in every input left empty; once a model path is given, critic (or "
        "critic_from_policy), rewards, prompts and eval_prompts are required.",
        None,
    )
    critic: str | None = _help(
        "Critic initialisation (a sequence-classification model directory) [S: critic from the "
        "trained RM]; required with a policy unless critic_from_policy; none in the tiny world = "
        "its reward model.",
        None,
    )
    critic_from_policy: bool = _help("Initialise the critic from the policy's body instead.", False)
    reference: str | None = _help(
        "Reference model directory for the KL term; none = the policy (PEI keeps the SFT model "
        "here while the actor continues from the last round).",
        None,
    )
    rewards: list[RewardSpec] = _help(
        "Reward sources, weighted and summed (entries: see rewards[] below): a YAML list or "
        "mapping, or one source written short: a reward model directory, an http(s) URL, "
        "'module:function', 'file.py:function', tiny, mcq, rule:NAME or a YAML file of entries; "
        "repeat --rewards to sum several. Required with a policy; empty in the tiny world = its "
        "rule (align.tiny.reward:tiny_world_reward).",
        factory=list,
    )
    prompts: str | None = _help(
        "Prompt records (JSONL/Parquet/CSV/dir); required with a policy; none in the tiny world = "
        "its RL prompts.",
        None,
    )
    eval_prompts: str | None = _help(
        "Held-out prompt records; required with a policy; none in the tiny world = its held-out "
        "prompts.",
        None,
    )
    default_category: str | None = _help(
        "Category of prompt records that carry none (none: every record must carry one).", None
    )
    chat_format: str = _help("Chat format of the policy (xuanyuan, xuanyuan-6b, ziya2, hf).", "hf")
    category_weights: dict[str, float] | None = _help(
        "Share of prompts per category (normalised); none = equal.", None
    )
    output_dir: str = _help("Run directory (config.yaml, metrics.jsonl, checkpoints/).", "runs/ppo")
    seed: int = _help("Seed of sampling, prompt draws and initialisation.", 0, ge=0)
    lora_r: int = _help(
        "LoRA rank for actor and critic (0 = full fine-tuning). With LoRA the "
        "reference is the actor with its adapters disabled.",
        0,
        ge=0,
    )
    lora_alpha: int = _help("LoRA alpha.", 16, ge=1)
    lora_dropout: float = _help("LoRA dropout.", 0.0, ge=0, lt=1)
    lora_target_modules: list[str] | str = _help("Modules LoRA adapts.", "all-linear")

    # memory and speed
    dtype: Literal["float32", "bfloat16", "float16"] = _help(
        "Dtype the models are loaded in (float32, bfloat16, float16); losses, advantages and KL "
        "are computed in float32 whatever it is. With DeepSpeed, bf16/fp16 mixed precision and "
        "fp32 master weights come from the accelerate config.",
        "float32",
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = _help(
        "Attention kernel of every model (eager, sdpa, flash_attention_2); none = transformers' "
        "choice for the model.",
        None,
    )
    gradient_checkpointing: bool = _help(
        "Recompute activations in the backward pass of actor and critic (less memory, ~30% "
        "more compute).",
        False,
    )
    offload_frozen_models: bool = _help(
        "Keep the reference and reward models on the CPU except while they score (frees GPU "
        "memory for training and generation; no effect on a CPU run). Under ZeRO-3 they are "
        "DeepSpeed engines: their partitions stay in CPU memory (offload_param) and each "
        "layer's are fetched while it runs.",
        False,
    )
    max_tokens_per_micro_batch: int | None = _help(
        "Form micro-batches by token budget instead of micro_batch_size samples: rows sorted "
        "by length, longest first, packed while rows × (longest prompt + longest completion) "
        "stays within it; at least max_prompt_length + max_new_tokens. The update is the same, "
        "only the split differs.",
        None,
        ge=1,
    )

    # rollout
    rollout: RolloutConfig = _help(
        "Rollout engine and its options (hf, vllm, vllm-server).", factory=RolloutConfig
    )
    rollout_batch_size: int = _help("Prompts per PPO step.", 32, ge=1)
    samples_per_prompt: int = _help("Completions per prompt.", 1, ge=1)
    online_filter: OnlineFilterConfig = _help(
        "Drop prompt groups whose score std or mean fails align filter's rules each step and "
        "refill them (needs samples_per_prompt >= 2).",
        factory=OnlineFilterConfig,
    )
    max_prompt_length: int = _help(
        "Longer prompts are left-truncated (and counted). 1024 as OpenRLHF's default: room for a "
        "multi-turn financial question; the tiny config sets 128.",
        1024,
        ge=1,
    )
    max_new_tokens: int = _help(
        "Completion length limit. 1024 as OpenRLHF's default: a 7B model's full answer (a "
        "calculation with its working, a compliance reply) is rarely longer; the tiny config "
        "sets 48.",
        1024,
        ge=1,
    )
    temperature: float = _help("Sampling temperature [S: 0.7, XuanYuan-13B].", 0.7, gt=0)
    top_p: float = _help("Nucleus sampling [S: 0.9, XuanYuan-13B].", 0.9, gt=0, le=1)
    top_k: int = _help("Top-k sampling (0 = off; 1 makes sampling deterministic).", 0, ge=0)
    missing_eos_penalty: float | None = _help(
        "Subtracted from the score of a completion that hit the length limit without EOS.",
        1.0,
        ge=0,
    )

    # optimisation
    total_steps: int = _help("PPO steps (one rollout batch each) [S: ~300, XuanYuan-6B].", 50, ge=1)
    ppo_epochs: int = _help("Passes over each rollout batch.", 1, ge=1)
    num_minibatches: int = _help("Optimizer steps per epoch.", 1, ge=1)
    micro_batch_size: int = _help(
        "Samples per forward/backward (gradient accumulation).", 16, ge=1
    )
    actor_lr: float = _help("Actor learning rate [S: 5e-7 at 6B scale].", 5e-7, ge=0)
    critic_lr: float = _help("Critic learning rate [S: 5e-7 at 6B scale].", 5e-7, ge=0)
    weight_decay: float = _help("AdamW weight decay.", 0.0, ge=0)
    warmup_steps: int = _help("Linear warm-up of both learning rates, in PPO steps.", 0, ge=0)
    max_grad_norm: float = _help("Gradient clipping (per model).", 1.0, gt=0)

    # PPO objective
    beta: float = _help("KL weight β [S: 0.05].", 0.05, ge=0)
    kl_estimator: Literal["k1", "k2", "k3"] = _help(
        "Per-token KL estimator: k1, k2 or k3.", "k1"
    )
    kl_target: float | None = _help(
        "Target KL for the adaptive controller; none = fixed β.", None, gt=0
    )
    kl_horizon: int = _help("Horizon of the adaptive KL controller (Ziegler et al.).", 10000, ge=1)
    gamma: float = _help("Discount γ [DeepSpeed-Chat: 1].", 1.0, ge=0, le=1)
    lam: float = _help("GAE λ [DeepSpeed-Chat: 0.95].", 0.95, ge=0, le=1)
    clip_eps: float = _help("Policy ratio clip [DeepSpeed-Chat: 0.2].", 0.2, gt=0)
    value_clip_eps: float | None = _help(
        "Value clip [DeepSpeed-Chat: 0.2]; none = off.", 0.2, gt=0
    )
    dual_clip: float | None = _help(
        "Dual-clip constant c > 1 for negative advantages.", None, gt=1
    )
    clip_eps_low: float | None = _help(
        "Lower ratio clip (1 - this); none = clip_eps.", None, gt=0, lt=1
    )
    clip_eps_high: float | None = _help(
        "Upper ratio clip (1 + this); none = clip_eps. Larger than the lower one = DAPO's "
        "clip-higher (0.28 with 0.2 there), keeping low-probability tokens able to grow.",
        None,
        gt=0,
    )
    advantage_estimator: Literal[
        "gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"
    ] = _help(
        "gae (critic, GAE); critic-free (no critic is loaded, no value pass runs): grpo (score "
        "minus its prompt's mean, over the std), dr_grpo (without the std), rloo "
        "(leave-one-out mean), reinforce_pp (REINFORCE++: returns with per-token KL, whitened "
        "over the batch), reinforce_pp_baseline (the same after subtracting the prompt's mean). "
        "The grouped ones (grpo, dr_grpo, rloo, reinforce_pp_baseline) need samples_per_prompt "
        ">= 2 and gamma 1 (definitions and papers: align/core/core_algos.py).",
        "gae",
    )
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = (
        _help(
            "How the policy loss averages tokens: token-mean (every token alike), "
            "seq-mean-token-mean (every answer alike, GRPO as published), "
            "seq-mean-token-sum-norm (token sums over max_new_tokens, Dr. GRPO). The value "
            "loss is always a token mean.",
            "token-mean",
        )
    )
    tis_cap: float | None = _help(
        "Truncated importance sampling: weigh each token's policy loss by min(p_trainer / "
        "p_engine, tis_cap), p_engine the rollout engine's sampling probability (vLLM's "
        "kernels and precision differ from the trainer's); logged as policy/tis_*. None = off. "
        "Yao et al. 2025 use 2.",
        None,
        gt=0,
    )
    score_clip: float | None = _help(
        "Clip reward scores to ±this [DeepSpeed-Chat: 5].", 5.0, gt=0
    )
    normalize_rewards: bool = _help(
        "Z-score scores with running mean/std [S: XuanYuan-13B].", False
    )
    whiten_advantages: bool = _help("Whiten advantages per rollout batch.", True)
    vf_coef: float = _help(
        "Weight of the value loss (the critic has its own optimizer).", 1.0, ge=0
    )
    critic_warmup_steps: int = _help(
        "The first N PPO steps train the critic alone (the actor's loss is left out and its "
        "weights do not move); gae only.",
        0,
        ge=0,
    )
    critic_updates_per_step: int = _help(
        "Critic updates per actor update: after each PPO step's joint epochs, N - 1 more "
        "passes (ppo_epochs × num_minibatches each) train the critic alone; gae only.",
        1,
        ge=1,
    )
    critic_min_explained_variance: float | None = _help(
        "Stop the run when the critic's explained variance of the returns stays below this "
        "for critic_divergence_patience steps in a row (non-finite values stop it at once); "
        "none = only the non-finite check.",
        None,
    )
    critic_divergence_patience: int = _help(
        "Steps in a row below critic_min_explained_variance before the run stops.", 5, ge=1
    )
    max_bad_steps: int = _help("Abort after this many non-finite losses in a row.", 3, ge=1)

    # bookkeeping
    save_every: int = _help(
        "Checkpoint every N steps (0 = only at the end) [S: 20].", 20, ge=0
    )
    save_total_limit: int | None = _help(
        "Keep only the N most recent checkpoints (older ones are deleted); none = keep all.",
        None,
        ge=1,
    )
    eval_every: int = _help(
        "Greedy held-out evaluation every N steps (0 = start and end).", 0, ge=0
    )
    eval_max_prompts: int = _help("Held-out prompts evaluated (first N).", 300, ge=0)
    eval_temperature: float = _help(
        "0 = greedy held-out answers; > 0 samples them (top_p as in training) from a fixed seed, "
        "measuring the policy as it is sampled.",
        0.0,
        ge=0,
    )
    resume_from: str | None = _help("Checkpoint directory to resume from, or 'latest'.", None)
    report_to: list[str] = report_to_field()
    project: str = project_field()
    run_name: str | None = run_name_field()

    def __post_init__(self) -> None:
        check_ranges(self)
        self.report_to = check_report_to(self.report_to)
        n = self.rollout_batch_size * self.samples_per_prompt
        if n % self.num_minibatches:
            raise ValueError(
                f"num_minibatches: expected a divisor of rollout_batch_size × "
                f"samples_per_prompt = {n}, got {self.num_minibatches}"
            )
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"kl_estimator: expected k1, k2 or k3, got {self.kl_estimator!r}")
        self._check_estimator()
        longest = self.max_prompt_length + self.max_new_tokens  # one sample, never split
        if (self.max_tokens_per_micro_batch or longest) < longest:
            raise ValueError(
                f"max_tokens_per_micro_batch: expected at least max_prompt_length + "
                f"max_new_tokens = {longest}, got {self.max_tokens_per_micro_batch}"
            )
        self.rewards = as_specs(self.rewards)  # entries given in code as mappings
        if not self.rewards and self.uses_tiny_world():
            self.rewards = tiny_reward()  # empty = not given; a run with a policy requires them
        if isinstance(self.rollout, Mapping):  # given in code as a mapping
            self.rollout = build(RolloutConfig, self.rollout, "rollout")
        if isinstance(self.online_filter, Mapping):  # given in code as a mapping
            self.online_filter = build(OnlineFilterConfig, self.online_filter, "online_filter")
        if self.online_filter.enabled and self.samples_per_prompt < 2:
            raise ValueError(
                f"online_filter.enabled: a group's std needs samples_per_prompt >= 2, got "
                f"{self.samples_per_prompt}"
            )

    def uses_critic(self) -> bool:
        """Whether the advantage estimator needs a critic (gae): otherwise none is built."""
        return ADVANTAGE_ESTIMATORS[self.advantage_estimator].needs_critic

    def _check_estimator(self) -> None:
        """The estimator is known, and what it needs (groups, undiscounted returns, a critic
        for the critic options) is there."""
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(
                f"advantage_estimator: expected one of {sorted(ADVANTAGE_ESTIMATORS)}, "
                f"got {self.advantage_estimator!r}"
            )
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise ValueError(
                f"loss_agg_mode: expected one of {list(LOSS_AGG_MODES)}, got {self.loss_agg_mode!r}"
            )
        name = self.advantage_estimator
        if ADVANTAGE_ESTIMATORS[name].grouped:
            if self.samples_per_prompt < 2:
                raise ValueError(
                    f"samples_per_prompt: advantage_estimator {name} compares the answers to "
                    f"one prompt, expected at least 2, got {self.samples_per_prompt}"
                )
            if self.gamma != 1.0:
                raise ValueError(
                    f"gamma: advantage_estimator {name} credits the whole answer with its "
                    f"group-relative score, expected 1, got {self.gamma}"
                )
        if not self.uses_critic():
            for field, default in (("critic_warmup_steps", 0), ("critic_updates_per_step", 1)):
                if getattr(self, field) != default:
                    raise ValueError(
                        f"{field}: advantage_estimator {name} has no critic, expected "
                        f"{default}, got {getattr(self, field)}"
                    )

    def uses_tiny_world(self) -> bool:
        """No model path given (policy, critic, reference): the tiny world fills in the inputs
        left empty. Once one is given, every input is the user's to give (no toy fallback)."""
        return self.policy is None and self.critic is None and self.reference is None

    @classmethod
    def from_sources(cls, config: str | Path | None = None, overrides: list[str] = ()) -> PPOConfig:
        """YAML file (a path or a shipped name; optional) then ``--field value`` overrides."""
        return load_config(cls, config, overrides)

    def to_yaml(self) -> str:
        """The resolved config as YAML (reads back to an equal config)."""
        return config_to_yaml(self)


#: What each input of a run is, named in the error when a run with a model path lacks it.
EXPECTED_INPUTS = {
    "policy": "the SFT policy directory (HF format, safetensors)",
    "critic": "a sequence-classification model directory (the trained reward model [S]), or "
    "critic_from_policy: true",
    "rewards": REWARDS_EXPECTED,
    "prompts": "prompt records {prompt | messages, category} (JSONL/Parquet/CSV/dir)",
    "eval_prompts": "held-out prompt records {prompt | messages, category}",
}


def missing_inputs(cfg: PPOConfig) -> list[tuple[str, str]]:
    """``(field, what it expects)`` of every input left empty by a config that names a model
    path (none when it names none: the tiny world fills in)."""
    if cfg.uses_tiny_world():
        return []
    empty = {
        "policy": cfg.policy is None,
        "critic": cfg.critic is None and not cfg.critic_from_policy and cfg.uses_critic(),
        "rewards": not cfg.rewards,
        "prompts": cfg.prompts is None,
        "eval_prompts": cfg.eval_prompts is None,
    }
    return [(name, EXPECTED_INPUTS[name]) for name, is_empty in empty.items() if is_empty]


def check_inputs(cfg: PPOConfig, prefix: str = "") -> None:
    """One line naming the first input a config with a model path leaves empty (``prefix``:
    where the PPO config sits, e.g. ``ppo.`` in PEI's)."""
    missing = missing_inputs(cfg)
    if missing:
        given = next(n for n in ("policy", "critic", "reference") if getattr(cfg, n) is not None)
        raise missing_inputs_error(
            (prefix + given, getattr(cfg, given)), [(prefix + n, e) for n, e in missing]
        )
