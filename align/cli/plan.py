"""``align plan``: the per-process memory of a run, item by item, and whether it fits a device.

Reads the run's config (PPO, or a PEI config's PPO config; ``--field value`` overrides as for the
run itself), the launch (``--accelerate_config`` for the ZeRO stage, mixed precision and process
count, or ``--zero_stage`` / ``--num_processes``) and the models' sizes (each model directory's
``config.json``, or a known shape: ``--shape policy=llama-2-7b``), then prints the items of
:func:`align.plan.ppo.ppo_items` and a verdict line. Exit status 0 whether it fits or not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import click
import yaml
from rich.table import Table

from align.cli.common import console
from align.plan import memory as M
from align.plan.ppo import VLLM, PPORun, RewardModel, ppo_items

#: The models a PPO plan sizes, as ``--shape ROLE=NAME`` names them (``rewards[K]`` too).
ROLES = ("policy", "critic", "reference", "reward")
DEFAULT_DEVICE_GIB = 80.0


@dataclass(frozen=True)
class Launch:
    """How the run is launched, as far as memory goes (from an accelerate config and options)."""

    processes: int = 1
    deepspeed: bool = False
    zero_stage: int = 0
    mixed_precision: str | None = None
    offload_optimizer: bool = False
    reduce_bucket: int = M.DEEPSPEED_REDUCE_BUCKET
    max_live_parameters: int = M.DEEPSPEED_MAX_LIVE_PARAMETERS
    persistence_threshold: int = M.DEEPSPEED_PERSISTENCE_THRESHOLD

    def describe(self) -> str:
        what = f"ZeRO-{self.zero_stage}" if self.deepspeed else "no DeepSpeed"
        mixed = self.mixed_precision or "no"
        s = "es" if self.processes > 1 else ""
        return f"{self.processes} process{s}, {what}, mixed precision {mixed}"


@dataclass
class Plan:
    """A computed plan: the items, the peak and its phase, and what it was computed for."""

    items: list[M.Item]
    peak: float
    peak_phase: str
    device_memory: float
    header: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.peak <= self.device_memory

    def verdict(self) -> str:
        device = _size(self.device_memory)
        where = f"peak {_size(self.peak)} per process ({self.peak_phase} phase)"
        if self.fits:
            return f"fits in {device}: {where}, {_size(self.device_memory - self.peak)} to spare"
        return f"does not fit in {device}: {where}, {_size(self.peak - self.device_memory)} over"

    def to_json(self) -> dict:
        return {
            "items": [asdict(i) for i in self.items],
            "peak_bytes": self.peak,
            "peak_phase": self.peak_phase,
            "phase_totals": M.phase_totals(self.items),
            "device_memory_bytes": self.device_memory,
            "fits": self.fits,
            "verdict": self.verdict(),
            "header": self.header,
        }


# --------------------------------------------------------------------------- the launch


def read_launch(
    accelerate_config: str | None,
    num_processes: int | None,
    zero_stage: int | None,
    mixed_precision: str | None,
) -> Launch:
    """The launch from an accelerate config file (and its DeepSpeed JSON, if it names one),
    then the options, which win."""
    values: dict = {}
    if accelerate_config:
        values = _accelerate_values(Path(accelerate_config))
    if num_processes is not None:
        values["processes"] = num_processes
    if zero_stage is not None:
        values["zero_stage"] = zero_stage
        values["deepspeed"] = zero_stage > 0
    if mixed_precision is not None:
        values["mixed_precision"] = None if mixed_precision == "no" else mixed_precision
    return Launch(**values)


def _accelerate_values(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"--accelerate_config: {path}: no such file")
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"--accelerate_config: {path}: expected a mapping (an accelerate config)")
    mixed = loaded.get("mixed_precision")
    values = {
        "processes": int(loaded.get("num_processes") or 1),
        "deepspeed": loaded.get("distributed_type") == "DEEPSPEED",
        "mixed_precision": mixed if mixed in M.MIXED_PRECISION else None,
    }
    if values["deepspeed"]:
        ds = loaded.get("deepspeed_config") or {}
        values["zero_stage"] = int(ds.get("zero_stage", 0) or 0)
        offload = ds.get("offload_optimizer_device") or "none"
        values["offload_optimizer"] = offload != "none"
        if ds.get("deepspeed_config_file"):
            values.update(_deepspeed_json(path.parent, ds["deepspeed_config_file"]))
    return values


def _deepspeed_json(base: Path, name: str) -> dict:
    """The memory settings of a DeepSpeed JSON config (an ``auto`` value keeps the default)."""
    file = Path(name) if Path(name).is_absolute() or Path(name).is_file() else base / name
    config = json.loads(file.read_text(encoding="utf-8"))
    zero = config.get("zero_optimization", {})
    out: dict = {"zero_stage": int(zero.get("stage", 0))}
    for key, ours in (
        ("reduce_bucket_size", "reduce_bucket"),
        ("stage3_max_live_parameters", "max_live_parameters"),
        ("stage3_param_persistence_threshold", "persistence_threshold"),
    ):
        if isinstance(zero.get(key), (int, float)):
            out[ours] = int(zero[key])
    if (zero.get("offload_optimizer") or {}).get("device", "none") != "none":
        out["offload_optimizer"] = True
    for precision in ("bf16", "fp16"):
        if (config.get(precision) or {}).get("enabled") is True:
            out["mixed_precision"] = precision
    return out


# --------------------------------------------------------------------------- the run's config


def load_run_config(config: str, overrides: list[str]):
    """``(kind, PPOConfig)``: a PPO config, or the PPO config of a PEI config (``ppo:``)."""
    # lazy: the config classes load torch and TRL; keeps 'align --help' fast
    from align.core.config import load_config, read_config_file, resolve_config_file
    from align.pei.run import PEIConfig
    from align.ppo.config import PPOConfig

    file = resolve_config_file(PPOConfig, config)
    if "ppo" in read_config_file(file):
        return "PEI", load_config(PEIConfig, file, overrides).ppo
    return "PPO", load_config(PPOConfig, file, overrides)


def parse_shapes(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--shape ROLE=NAME`` options as ``{role: name}``."""
    shapes = {}
    for pair in pairs:
        role, eq, name = pair.partition("=")
        role = role.strip()
        if not eq or not name or not (role in ROLES or _is_reward_entry(role)):
            raise ValueError(
                f"--shape {pair}: expected ROLE=NAME with ROLE one of {', '.join(ROLES)} or "
                "rewards[K]"
            )
        shapes[role] = name.strip()
    return shapes


def _is_reward_entry(role: str) -> bool:
    return role.startswith("rewards[") and role.endswith("]") and role[8:-1].isdigit()


class _Sizer:
    """Model sizes by (source, head), each model built on the meta device once."""

    def __init__(self, cfg, launch: Launch) -> None:
        self.cfg, self.launch, self.cache = cfg, launch, {}

    def dims(self, source: str, field: str, head: str, lora: bool = False) -> M.ModelDims:
        # lazy: torch and transformers build the meta models; keeps 'align --help' fast
        from align.plan.models import model_dims, read_config

        key = (str(source), head, lora)
        if key not in self.cache:
            cfg = self.cfg
            self.cache[key] = model_dims(
                read_config(source, field),
                head,
                lora_rank=cfg.lora_r if lora else 0,
                lora_targets=cfg.lora_target_modules,
                persistence_threshold=self.launch.persistence_threshold,
            )
        return self.cache[key]


def _source(shapes: dict, role: str, path: str | None, what: str) -> str:
    source = shapes.get(role) or path
    if source is None:
        raise ValueError(
            f"{role}: not set ({what}); give its model directory in the config or "
            f"--shape {role}=NAME"
        )
    return source


def ppo_run(cfg, launch: Launch, shapes: dict[str, str], device_memory: float) -> PPORun:
    """The :class:`PPORun` of a PPO config under ``launch``."""
    sizer = _Sizer(cfg, launch)
    lora = cfg.lora_r > 0
    policy = _source(shapes, "policy", cfg.policy, "a run without model paths uses the tiny world")
    actor = sizer.dims(policy, "policy", "causal", lora)
    if cfg.critic_from_policy:
        critic = sizer.dims(policy, "policy", "scalar", lora)
    else:
        critic_source = _source(shapes, "critic", cfg.critic, "and critic_from_policy is false")
        critic = sizer.dims(critic_source, "critic", "scalar", lora)
    reference = None
    if shapes.get("reference") or cfg.reference:
        reference = sizer.dims(shapes.get("reference") or cfg.reference, "reference", "causal")
    elif not lora:
        reference = sizer.dims(policy, "policy", "causal")
    return PPORun(
        actor=actor,
        critic=critic,
        reference=reference,
        rewards=tuple(_reward_models(cfg, shapes, sizer)),
        device_memory=device_memory,
        **_launch_fields(launch),
        **_batch_fields(cfg, launch.processes),
        **_engine_fields(cfg),
    )


def _reward_models(cfg, shapes: dict[str, str], sizer: _Sizer) -> list[RewardModel]:
    """The reward models among the reward sources (functions, rules and HTTP endpoints hold no
    memory in the training processes)."""
    models = []
    for k, spec in enumerate(cfg.rewards):
        if spec.type != "model":
            continue
        role = f"rewards[{k}]"
        source = shapes.get(role) or shapes.get("reward") or spec.path
        models.append(
            RewardModel(
                role,
                sizer.dims(source, role, "scalar"),
                batch=spec.batch_size or 16,
                max_length=spec.max_length or 1024,
            )
        )
    return models


def _launch_fields(launch: Launch) -> dict:
    return {
        "processes": launch.processes,
        "zero_stage": launch.zero_stage,
        "deepspeed": launch.deepspeed,
        "mixed_precision": launch.mixed_precision,
        "offload_optimizer": launch.offload_optimizer,
        "reduce_bucket": launch.reduce_bucket,
        "max_live_parameters": launch.max_live_parameters,
    }


def _batch_fields(cfg, processes: int) -> dict:
    """Sequences per process and per micro-batch (a token budget makes micro-batches of as many
    full-length sequences as fit, at least one)."""
    prompts = max(cfg.rollout_batch_size // processes, 1)
    seq = cfg.max_prompt_length + cfg.max_new_tokens
    micro = cfg.micro_batch_size
    if cfg.max_tokens_per_micro_batch:
        micro = max(cfg.max_tokens_per_micro_batch // seq, 1)
    per_call = cfg.rollout.hf.batch_size or prompts
    return {
        "dtype": cfg.dtype,
        "prompt_length": cfg.max_prompt_length,
        "new_tokens": cfg.max_new_tokens,
        "rollout_sequences": prompts * cfg.samples_per_prompt,
        "generate_sequences": min(per_call, prompts) * cfg.samples_per_prompt,
        "micro_batch": min(micro, prompts * cfg.samples_per_prompt),
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "offload_frozen": cfg.offload_frozen_models,
        "attention": cfg.attn_implementation or "sdpa",
    }


def _engine_fields(cfg) -> dict:
    engine = cfg.rollout.engine
    options = cfg.rollout.vllm
    if engine == "hf" or (engine == "vllm-server" and cfg.rollout.server.url):
        return {"engine": engine}
    dtype = cfg.dtype if options.dtype == "auto" else options.dtype
    return {
        "engine": engine,
        "vllm": VLLM(
            weight_bytes=M.DTYPE_BYTES[dtype],
            gpu_memory_utilization=options.gpu_memory_utilization,
            kv_cache_bytes=options.kv_cache_memory_bytes,
            sleep_mode=options.enable_sleep_mode,
            server_on_this_node=engine == "vllm-server",
        ),
    }


def make_plan(run: PPORun, header: list[str]) -> Plan:
    items = ppo_items(run)
    total, phase = M.peak(items)
    return Plan(items, total, phase, run.device_memory, header)


def plan_from_config(
    config: str,
    overrides: list[str] = (),
    *,
    launch: Launch = Launch(),
    shapes: dict[str, str] | None = None,
    device_memory_gib: float = DEFAULT_DEVICE_GIB,
    reserve_gib: float = 2.0,
    host: bool = False,
) -> Plan:
    """The plan of a config file under ``launch`` (what ``align plan`` prints).
    ``reserve_gib``: kept for what the plan does not model (on a GPU the CUDA context, NCCL
    buffers and fragmentation). ``host``: plan a CPU run, where host memory is the device
    (buffers count as far as they are touched; :class:`align.plan.ppo.PPORun`)."""
    kind, cfg = load_run_config(config, list(overrides))
    run = ppo_run(cfg, launch, shapes or {}, device_memory_gib * M.GIB)
    run = replace(run, reserve=reserve_gib * M.GIB, host=host)
    return make_plan(run, _header(config, kind, run, launch))


def _header(config: str, kind: str, run: PPORun, launch: Launch) -> list[str]:
    def model(name: str, d: M.ModelDims | None) -> str:
        if d is None:
            return f"{name}: the actor with its LoRA adapters disabled"
        trained = f", {d.trainable_params:,} trainable" if d.trainable is not None else ""
        return f"{name}: {d.params:,} parameters{trained} ({d.layers} layers, hidden {d.hidden})"

    lines = [
        f"{kind} config {config}: {launch.describe()}, load dtype {run.dtype}",
        model("actor", run.actor),
        model("critic", run.critic),
        model("reference", run.reference),
        *(model(f"reward {r.name}", r.dims) for r in run.rewards),
        f"rollout per process: {run.rollout_sequences} sequences of up to {run.seq:,} tokens "
        f"({run.prompt_length:,} prompt + {run.new_tokens:,} new), engine {run.engine}; "
        f"micro-batch {run.micro_batch}; gradient checkpointing "
        f"{'on' if run.gradient_checkpointing else 'off'}; attention {run.attention}",
    ]
    return lines


# --------------------------------------------------------------------------- printing


def _size(n: float) -> str:
    if abs(n) >= M.GIB:
        return f"{n / M.GIB:,.2f} GiB"
    return f"{n / M.MIB:,.1f} MiB"


#: Section titles of the table, one per phase.
PHASE_TITLES = {
    "always": "resident all run",
    "generation": "while generating",
    "scoring": "while scoring (no gradients)",
    "training": "while training a micro-batch",
}


def plan_table(plan: Plan) -> Table:
    """Items by phase; each phase ends with its total (what is resident all run, plus it)."""
    table = Table(title="memory per process", title_justify="left")
    table.add_column("item")
    table.add_column("memory", justify="right")
    table.add_column("how")
    totals = M.phase_totals(plan.items)
    for phase, title in PHASE_TITLES.items():
        table.add_row(title, "", "", style="bold")
        for item in plan.items:
            if item.phase == phase and item.bytes:
                table.add_row(f"  {item.name}", _size(item.bytes), item.note)
        if phase != "always":
            peak = " (peak)" if phase == plan.peak_phase else ""
            table.add_row(f"  total{peak}", _size(totals[phase]), "", style="bold")
    return table


SHAPE_HELP = (
    "Size a model by a known shape instead of its directory: ROLE (policy, critic, reference, "
    "reward, rewards[K]) = NAME (llama-2-7b, llama-3-8b, llama-3-70b, qwen2-0.5b, qwen2-1.5b, "
    "qwen2.5-7b, qwen2.5-72b). Repeatable."
)


@click.command(
    "plan",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    help="Memory per process of a PPO run (or a PEI config's PPO runs) by item — weights, "
    "gradients, optimizer states, activations, frozen models, vLLM — and whether it fits a "
    "device. Any other --field value overrides the run's config (e.g. --micro_batch_size 2).",
    short_help="Memory per process of a PPO run, by item, and whether it fits a device.",
)
@click.option("--config", required=True, help="The run's YAML config (PPO or PEI).")
@click.option(
    "--num_processes",
    "--num-processes",
    type=int,
    default=None,
    help="Training processes (ZeRO partitions over them); default: the accelerate config's, "
    "else 1.",
)
@click.option(
    "--accelerate_config",
    "--accelerate-config",
    default=None,
    help="accelerate config file (DeepSpeed ZeRO stage, mixed precision, processes).",
)
@click.option(
    "--zero_stage",
    "--zero-stage",
    type=click.IntRange(0, 3),
    default=None,
    help="DeepSpeed ZeRO stage (overrides the accelerate config's).",
)
@click.option(
    "--mixed_precision",
    "--mixed-precision",
    type=click.Choice(["no", "bf16", "fp16"]),
    default=None,
    help="DeepSpeed mixed precision (overrides the accelerate config's).",
)
@click.option(
    "--device_memory",
    "--device-memory",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_DEVICE_GIB,
    show_default=True,
    help="Memory of one device, GiB.",
)
@click.option(
    "--reserve",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="GiB kept for what the plan does not model: CUDA context, NCCL buffers, fragmentation.",
)
@click.option("--shape", "shapes", multiple=True, metavar="ROLE=NAME", help=SHAPE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def plan_command(
    ctx, config, num_processes, accelerate_config, zero_stage, mixed_precision, device_memory,
    reserve, shapes, as_json,
) -> None:  # fmt: skip
    """``align plan``: print the plan (or its JSON) and the verdict; exit 0 either way."""
    launch = read_launch(accelerate_config, num_processes, zero_stage, mixed_precision)
    plan = plan_from_config(
        config,
        list(ctx.args),
        launch=launch,
        shapes=parse_shapes(shapes),
        device_memory_gib=device_memory,
        reserve_gib=reserve,
    )
    if as_json:
        click.echo(json.dumps(plan.to_json(), indent=1))
        return
    for line in plan.header:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(plan_table(plan))
    console.print(plan.verdict(), markup=False, highlight=False, soft_wrap=True)
