"""``PPOConfig``: every knob of ``align ppo``, with its default and help. Parsed from YAML plus
``--field value`` overrides (values read as YAML, so ``--beta 0.1`` is a float and
``--category_weights '{金融计算: 2}'`` a mapping)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from align.core.config import help_field as _help

TINY_REWARD = "align.tiny.reward:tiny_world_reward"


@dataclass
class PPOConfig:
    """PPO with actor, reference, critic and reward functions (METHODS §1). ``[S]`` marks values
    the XuanYuan reports state; the others are our defaults."""

    # models and data
    policy: str | None = _help("SFT policy directory; none = the tiny world's policy.", None)
    critic: str | None = _help(
        "Critic initialisation (a sequence-classification model directory); none = the reward "
        "model of the tiny world [S: critic from the trained RM].",
        None,
    )
    critic_from_policy: bool = _help("Initialise the critic from the policy's body instead.", False)
    reference: str | None = _help(
        "Reference model directory for the KL term; none = the policy (PEI keeps the SFT model "
        "here while the actor continues from the last round).",
        None,
    )
    rewards: list[dict] = _help(
        "Reward sources, weighted and summed: {type: model, path, chat_format, normalize}, "
        "{type: http, url, token_env}, {type: python, fn: 'pkg.mod:f' or 'file.py:f'}, "
        "{type: rule, rule: tiny|mcq|length|format}; each with weight, name, on_invalid.",
        factory=lambda: [{"type": "python", "fn": TINY_REWARD, "weight": 1.0}],
    )
    prompts: str | None = _help("Prompt records (JSONL/Parquet/CSV/dir); none = tiny world.", None)
    eval_prompts: str | None = _help("Held-out prompt records; none = tiny world's.", None)
    chat_format: str = _help("Chat format of the policy (xuanyuan, xuanyuan-6b, ziya2, hf).", "hf")
    category_weights: dict[str, float] | None = _help(
        "Share of prompts per category (normalised); none = equal.", None
    )
    output_dir: str = _help("Run directory (config.yaml, metrics.jsonl, checkpoints/).", "runs/ppo")
    seed: int = _help("Seed of sampling, prompt draws and initialisation.", 0)
    lora_r: int = _help(
        "LoRA rank for actor and critic (0 = full fine-tuning). With LoRA the "
        "reference is the actor with its adapters disabled.",
        0,
    )
    lora_alpha: int = _help("LoRA alpha.", 16)
    lora_dropout: float = _help("LoRA dropout.", 0.0)
    lora_target_modules: list[str] | str = _help("Modules LoRA adapts.", "all-linear")

    # rollout
    rollout_batch_size: int = _help("Prompts per PPO step.", 32)
    samples_per_prompt: int = _help("Completions per prompt.", 1)
    max_prompt_length: int = _help("Longer prompts are left-truncated (and counted).", 128)
    max_new_tokens: int = _help("Completion length limit.", 48)
    temperature: float = _help("Sampling temperature [S: 0.7, XuanYuan-13B].", 0.7)
    top_p: float = _help("Nucleus sampling [S: 0.9, XuanYuan-13B].", 0.9)
    top_k: int = _help("Top-k sampling (0 = off; 1 makes sampling deterministic).", 0)
    rollout_engine: str = _help(
        "Rollout engine: hf (transformers generate), vllm (colocated vllm.LLM) or vllm-server "
        "(an OpenAI-compatible vLLM server; YAML may also spell it rollout.engine).",
        "hf",
    )
    sync_every: int = _help(
        "Copy the actor's weights into a vLLM engine every N PPO steps (1 = before every "
        "rollout); the hf engine always generates with the live actor.",
        1,
    )
    vllm_gpu_memory_utilization: float = _help(
        "vLLM: GPU memory fraction for weights + KV cache (colocated with training).", 0.3
    )
    vllm_tensor_parallel_size: int = _help("vLLM: tensor parallel size.", 1)
    vllm_max_model_len: int | None = _help("vLLM: context length; none = the model's.", None)
    vllm_dtype: str = _help("vLLM: auto (the actor's), float32, bfloat16 or float16.", "auto")
    vllm_sleep_mode: bool = _help(
        "vLLM: release weights and KV cache between rollouts (GPU only).", False
    )
    vllm_kv_cache_bytes: int | None = _help(
        "vLLM: explicit KV cache size in bytes; none = from the memory fraction on GPU, 512 MiB "
        "on CPU (where the fraction would be of host memory).",
        None,
    )
    vllm_server_url: str | None = _help(
        "vllm-server: URL of a running server; none = start one on 127.0.0.1.", None
    )
    vllm_server_timeout_s: float = _help("vllm-server: per-request timeout in seconds.", 300.0)
    vllm_server_weight_sync: str = _help(
        "vllm-server: how weights reach the server: auto (nccl with a GPU, else gloo), nccl, "
        "gloo (process-group broadcast, any host) or file (safetensors file, same host only).",
        "auto",
    )
    vllm_server_sync_address: str = _help(
        "vllm-server: address at which the server's workers reach this trainer for the "
        "broadcast (the trainer's own address when the server runs elsewhere).",
        "127.0.0.1",
    )
    vllm_server_workers: int | None = _help(
        "vllm-server: worker processes of a running server (tensor × pipeline × data "
        "parallel); none = 1, or the tensor parallel size of a server align starts.",
        None,
    )
    missing_eos_penalty: float | None = _help(
        "Subtracted from the score of a completion that hit the length limit without EOS.", 1.0
    )

    # optimisation
    total_steps: int = _help("PPO steps (one rollout batch each) [S: ~300, XuanYuan-6B].", 50)
    ppo_epochs: int = _help("Passes over each rollout batch.", 1)
    num_minibatches: int = _help("Optimizer steps per epoch.", 1)
    micro_batch_size: int = _help("Samples per forward/backward (gradient accumulation).", 16)
    actor_lr: float = _help("Actor learning rate [S: 5e-7 at 6B scale].", 5e-7)
    critic_lr: float = _help("Critic learning rate [S: 5e-7 at 6B scale].", 5e-7)
    weight_decay: float = _help("AdamW weight decay.", 0.0)
    warmup_steps: int = _help("Linear warm-up of both learning rates, in PPO steps.", 0)
    max_grad_norm: float = _help("Gradient clipping (per model).", 1.0)

    # PPO objective
    beta: float = _help("KL weight β [S: 0.05].", 0.05)
    kl_estimator: str = _help("Per-token KL estimator: k1, k2 or k3.", "k1")
    kl_target: float | None = _help("Target KL for the adaptive controller; none = fixed β.", None)
    kl_horizon: int = _help("Horizon of the adaptive KL controller (Ziegler et al.).", 10000)
    gamma: float = _help("Discount γ [DeepSpeed-Chat: 1].", 1.0)
    lam: float = _help("GAE λ [DeepSpeed-Chat: 0.95].", 0.95)
    clip_eps: float = _help("Policy ratio clip [DeepSpeed-Chat: 0.2].", 0.2)
    value_clip_eps: float | None = _help("Value clip [DeepSpeed-Chat: 0.2]; none = off.", 0.2)
    dual_clip: float | None = _help("Dual-clip constant c > 1 for negative advantages.", None)
    score_clip: float | None = _help("Clip reward scores to ±this [DeepSpeed-Chat: 5].", 5.0)
    normalize_rewards: bool = _help(
        "Z-score scores with running mean/std [S: XuanYuan-13B].", False
    )
    whiten_advantages: bool = _help("Whiten advantages per rollout batch.", True)
    vf_coef: float = _help("Weight of the value loss (the critic has its own optimizer).", 1.0)
    max_bad_steps: int = _help("Abort after this many non-finite losses in a row.", 3)

    # bookkeeping
    save_every: int = _help("Checkpoint every N steps (0 = only at the end) [S: 20].", 20)
    save_total_limit: int | None = _help(
        "Keep only the N most recent checkpoints (older ones are deleted); none = keep all.", None
    )
    eval_every: int = _help("Greedy held-out evaluation every N steps (0 = start and end).", 0)
    eval_max_prompts: int = _help("Held-out prompts evaluated (first N).", 300)
    eval_temperature: float = _help(
        "0 = greedy held-out answers; > 0 samples them (top_p as in training) from a fixed seed, "
        "measuring the policy as it is sampled.",
        0.0,
    )
    resume_from: str | None = _help("Checkpoint directory to resume from, or 'latest'.", None)
    report_to: list[str] = _help("accelerate trackers (tensorboard, wandb).", factory=list)

    def __post_init__(self) -> None:
        positive = (
            "rollout_batch_size",
            "samples_per_prompt",
            "max_prompt_length",
            "max_new_tokens",
            "total_steps",
            "ppo_epochs",
            "num_minibatches",
            "micro_batch_size",
            "kl_horizon",
            "max_bad_steps",
            "sync_every",
            "vllm_tensor_parallel_size",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        n = self.rollout_batch_size * self.samples_per_prompt
        if n % self.num_minibatches:
            raise ValueError(
                f"num_minibatches: expected a divisor of rollout_batch_size × "
                f"samples_per_prompt = {n}, got {self.num_minibatches}"
            )
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"kl_estimator: expected k1, k2 or k3, got {self.kl_estimator!r}")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError(f"dual_clip: expected > 1, got {self.dual_clip}")
        if self.temperature <= 0:
            raise ValueError(f"temperature: expected > 0 for PPO sampling, got {self.temperature}")
        if self.lora_r < 0:
            raise ValueError(f"lora_r: expected >= 0 (0 = off), got {self.lora_r}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(
                f"save_total_limit: expected >= 1 or none, got {self.save_total_limit}"
            )
        if not self.rewards:
            raise ValueError("rewards: expected at least one reward function")
        self._check_rollout_engine()

    def _check_rollout_engine(self) -> None:
        from rollouts.factory import ENGINES, WEIGHT_SYNC

        if self.rollout_engine not in ENGINES:
            raise ValueError(
                f"rollout_engine: expected one of {', '.join(ENGINES)}, got {self.rollout_engine!r}"
            )
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(
                "vllm_gpu_memory_utilization: expected in (0, 1], "
                f"got {self.vllm_gpu_memory_utilization}"
            )
        if self.vllm_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(
                f"vllm_dtype: expected auto, float32, bfloat16 or float16, got {self.vllm_dtype!r}"
            )
        url = self.vllm_server_url
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"vllm_server_url: expected http(s)://host:port, got {url!r}")
        if self.vllm_server_weight_sync not in WEIGHT_SYNC:
            raise ValueError(
                f"vllm_server_weight_sync: expected one of {', '.join(WEIGHT_SYNC)}, "
                f"got {self.vllm_server_weight_sync!r}"
            )

    @classmethod
    def from_sources(cls, config: str | Path | None = None, overrides: list[str] = ()) -> PPOConfig:
        """YAML file (optional) then ``--field value`` overrides; unknown fields are errors."""
        from align.core.config import values_from_sources

        path = resolve_config_path(config) if config is not None else None
        hint = "; see `align ppo --show-config`"
        return cls(**values_from_sources(cls, path, overrides, rename=_flat_names, hint=hint))

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), allow_unicode=True, sort_keys=False)


SHIPPED_CONFIGS = Path(__file__).parent / "configs"


def resolve_config_path(config: str | Path) -> Path:
    """A YAML path, or the name of a config shipped with align (``tiny`` → ppo_tiny.yaml)."""
    shipped = SHIPPED_CONFIGS / f"ppo_{config}.yaml"
    if Path(config).is_file():
        return Path(config)
    if shipped.is_file():
        return shipped
    names = sorted(p.stem.removeprefix("ppo_") for p in SHIPPED_CONFIGS.glob("ppo_*.yaml"))
    raise FileNotFoundError(f"{config}: no such config file (shipped configs: {', '.join(names)})")


def _flat_names(values: dict, known: set[str]) -> dict:
    """Dotted or nested spellings of flat fields: ``rollout.engine: vllm`` and
    ``rollout: {engine: vllm}`` both mean ``rollout_engine: vllm``. Keys that are fields stay."""
    pairs: list[tuple[str, object]] = []
    for key, value in values.items():
        flat = key.replace(".", "_")
        if key in known or flat in known:
            pairs.append((key if key in known else flat, value))
        elif isinstance(value, dict):
            nested = {f"{flat}_{k}": v for k, v in value.items()}
            pairs.extend(_flat_names(nested, known).items())
        else:
            pairs.append((key, value))  # reported as unknown by the caller
    out: dict = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"{name}: given twice (in two spellings)")
        out[name] = value
    return out
