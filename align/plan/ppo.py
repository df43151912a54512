"""The memory of one PPO training process, item by item (pure; numbers in, :class:`Item` out).

A PPO step (``align.ppo.trainer``) has three phases; the peak of a process is what is always
resident plus its largest phase (:func:`align.plan.memory.peak`):

- **always**: the actor's and the critic's model states (weights, optimizer states, and under
  ZeRO-3 the gradient partition DeepSpeed allocates at start), the frozen reference and reward
  models, DeepSpeed's reduce bucket, and a colocated vLLM engine unless it sleeps between rollouts;
- **generation**: the rollout engine (below);
- **scoring**: forwards without gradients over this process's whole rollout batch — actor and
  critic together, then the reference, then each reward model in its own batches;
- **training**: gradients (ZeRO stages 0-2) and one micro-batch's activations and logits for the
  actor and the critic, and ZeRO-3's working set of gathered layers.

The rollout engine: transformers ``generate`` on the live actor (under ZeRO-3 TRL gathers the
whole actor and critic for it); a vLLM engine in each process (its own weights and KV cache,
weights synced one layer at a time under ZeRO-3; with sleep mode only while generating); or a
vLLM server — one align starts takes ``gpu_memory_utilization`` of the main node's GPUs, one
given by URL none of these processes' memory. ``offload_frozen_models`` keeps reference and
reward models in host memory except while each scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from align.plan import memory as M


@dataclass(frozen=True)
class RewardModel:
    """A reward model that scores in batches of ``batch`` sequences of at most ``max_length``."""

    name: str
    dims: M.ModelDims
    batch: int = 16
    max_length: int = 1024


@dataclass(frozen=True)
class VLLM:
    """A vLLM engine colocated in each training process (``vllm``), or the server align starts
    on the main node's GPUs (``vllm-server`` without a URL: ``server_on_this_node``).
    ``kv_cache_bytes`` when given; else it takes ``gpu_memory_utilization`` of the device for
    weights, KV cache and its activations."""

    weight_bytes: int
    gpu_memory_utilization: float = 0.3
    kv_cache_bytes: float | None = None
    sleep_mode: bool = False
    server_on_this_node: bool = False


@dataclass(frozen=True)
class PPORun:
    """What the memory of a PPO process depends on (see :class:`align.ppo.config.PPOConfig`).

    ``reference`` None: the actor with its LoRA adapters disabled (no second model). Lengths are
    the limits (``max_prompt_length``, ``max_new_tokens``): padded widths reach them whenever one
    prompt or completion of a batch does. ``rollout_sequences``: sequences this process generates
    and scores per step; ``generate_sequences``: sequences per ``generate`` call.
    ``host``: the run's "device" is host memory (a CPU run): buffers count as far as they are
    touched (:func:`memory.zero_buffer_bytes`) and frozen models are never offloaded.
    ``reserve``: bytes for what the plan does not model — on a GPU the CUDA context, NCCL
    buffers and allocator fragmentation; on a host the runtime's own memory.
    """

    actor: M.ModelDims
    critic: M.ModelDims
    reference: M.ModelDims | None
    rewards: tuple[RewardModel, ...] = ()
    processes: int = 1
    zero_stage: int = 0
    deepspeed: bool = False
    dtype: str = "float32"
    mixed_precision: str | None = None
    prompt_length: int = 128
    new_tokens: int = 48
    rollout_sequences: int = 32
    generate_sequences: int = 32
    micro_batch: int = 16
    gradient_checkpointing: bool = False
    attention: str = "sdpa"
    engine: str = "hf"
    vllm: VLLM | None = None
    device_memory: float = 80 * M.GIB
    reduce_bucket: int = M.DEEPSPEED_REDUCE_BUCKET
    max_live_parameters: int = M.DEEPSPEED_MAX_LIVE_PARAMETERS
    offload_optimizer: bool = False
    offload_frozen: bool = False
    host: bool = False
    reserve: float = 2 * M.GIB

    @property
    def seq(self) -> int:
        return self.prompt_length + self.new_tokens

    @property
    def compute_dtype(self) -> str:
        """The dtype weights and activations are in: DeepSpeed casts to its mixed precision."""
        if self.deepspeed and self.mixed_precision in M.MIXED_PRECISION:
            return M.MIXED_PRECISION[self.mixed_precision]
        return self.dtype

    @property
    def e(self) -> int:
        """Bytes per activation element (accelerate's autocast keeps float32 activations
        around its bf16 matmuls; counted as float32)."""
        return M.DTYPE_BYTES[self.compute_dtype]


def ppo_items(run: PPORun) -> list[M.Item]:
    """Every item of one PPO process, each with the phase it is resident in."""
    what = "runtime on the host" if run.host else "CUDA, NCCL, fragmentation"
    reserve = [M.Item(f"reserve: {what}", run.reserve, note="not modelled")] if run.reserve else []
    return [
        *reserve,
        *_model_state_items(run),
        *_frozen_items(run),
        *_engine_items(run),
        *_scoring_items(run),
        *_training_items(run),
    ]


def _model_state_items(run: PPORun) -> list[M.Item]:
    states = M.state_bytes(run.dtype, run.mixed_precision, run.deepspeed, run.zero_stage)
    n = run.processes if run.deepspeed else 1
    stage = run.zero_stage if run.deepspeed else 0
    parts = [M.trainable_model_bytes(d, states, stage, n) for d in (run.actor, run.critic)]
    weights, grads, optimizer = (sum(p[k] for p in parts) for k in range(3))

    def per(partitioned: bool) -> str:
        return f" ÷ {n}" if partitioned else ""

    shard_note = per(stage == 3)
    master = " + fp32 master" if states.optimizer > 8 else ""
    trainable = run.actor.trainable_params + run.critic.trainable_params
    items = [
        M.Item("weights: actor + critic", weights, note=f"{states.weights:g} B/param{shard_note}"),
        M.Item(
            "optimizer states",
            0.0 if run.offload_optimizer else optimizer,
            note=f"AdamW{master}, {states.optimizer:g} B/param{per(stage >= 1)}"
            + (", offloaded to the CPU" if run.offload_optimizer else ""),
        ),
        # ZeRO-3 keeps a flat gradient partition for the whole run; below, gradients live from
        # the first backward of a step to the optimizer's zero_grad
        M.Item(
            "gradients",
            grads,
            "always" if stage == 3 else "training",
            note=f"{states.grads:g} B/param{per(stage >= 2)}",
        ),
    ]
    bucket = M.zero_buffer_bytes(stage, run.reduce_bucket, states.grads, trainable, run.host)
    if bucket:
        items.append(
            M.Item(
                "ZeRO reduce bucket",
                bucket,
                "always" if stage == 3 else "training",
                note=f"{run.reduce_bucket:,} elements",
            )
        )
    return items


def _frozen_items(run: PPORun) -> list[M.Item]:
    """The reference and the reward models. Under ZeRO-3 each is a frozen DeepSpeed engine
    (TRL's ``prepare_deepspeed``): partitioned, in the compute dtype. Otherwise the reference is
    a whole copy (a stage-0 engine under DeepSpeed, cast to the compute dtype) and reward models
    stay whole in the load dtype. ``offload_frozen_models`` keeps them in host memory except
    while each scores: one at a time on the device then (under ZeRO-3 only the parameters being
    used, DeepSpeed's ``offload_param``)."""
    stage = run.zero_stage if run.deepspeed else 0
    frozen = []
    if run.reference is not None:
        frozen.append(("reference", run.reference, run.e))
    for reward in run.rewards:
        dtype_bytes = run.e if stage == 3 or not run.deepspeed else M.DTYPE_BYTES[run.dtype]
        frozen.append((f"reward model {reward.name}", reward.dims, dtype_bytes))
    if run.offload_frozen and not run.host:
        return _offloaded_frozen_items(run, frozen, stage)
    items = []
    for name, dims, dtype_bytes in frozen:
        share = f" ÷ {run.processes}" if stage == 3 else ", whole"
        items.append(
            M.Item(
                name,
                M.frozen_model_bytes(dims, dtype_bytes, stage, run.processes),
                note=f"frozen, {dtype_bytes} B/param{share}",
            )
        )
    return items


def _offloaded_frozen_items(run: PPORun, frozen: list, stage: int) -> list[M.Item]:
    if not frozen:
        return []
    if stage == 3:
        size = max(min(d.params, run.max_live_parameters) * b for _, d, b in frozen)
        note = "offloaded; ZeRO-3 fetches the parameters in use"
    else:
        size = max(d.params * b for _, d, b in frozen)
        note = "offloaded; one frozen model on the device at a time"
    names = " / ".join(name for name, _, _ in frozen)
    return [M.Item(names, size, "scoring", note=note)]


def _engine_items(run: PPORun) -> list[M.Item]:
    if run.engine == "hf":
        return _generate_items(run)
    if run.engine == "vllm" and run.vllm is not None:
        return [*_vllm_items(run, run.vllm), *_layer_sync_items(run)]
    if run.vllm is not None and run.vllm.server_on_this_node:
        util = run.vllm.gpu_memory_utilization
        return [
            M.Item(
                "vLLM server align starts",
                util * run.device_memory,
                note=f"{util:g} of each of its GPUs (the main node's)",
            ),
            *_layer_sync_items(run),
        ]
    return [
        M.Item("vLLM server", 0.0, "generation", note="elsewhere (rollout.server.url)"),
        *_layer_sync_items(run),
    ]


def _layer_sync_items(run: PPORun) -> list[M.Item]:
    """Weight sync to a vLLM engine under ZeRO-3 gathers one layer at a time."""
    if not (run.deepspeed and run.zero_stage == 3):
        return []
    layer = run.actor.layer_params * run.e
    return [M.Item("weight sync: one layer gathered", layer, "generation", note="ZeRO-3")]


def _generate_items(run: PPORun) -> list[M.Item]:
    """transformers ``generate`` on the live actor (``rollouts.hf_generate``)."""
    e, b = run.e, run.generate_sequences
    items = [
        M.Item(
            "KV cache (generate)",
            M.kv_cache_bytes(run.actor, b, run.seq, e),
            "generation",
            note=_tokens(b, run.seq),
        ),
        M.Item(
            "prefill and logits (generate)",
            M.forward_transient_bytes(run.actor, e, b, run.prompt_length, run.attention)
            + M.generation_logits_bytes(b, run.actor.vocab, e),
            "generation",
        ),
    ]
    if run.deepspeed and run.zero_stage == 3:
        gathered = sum(
            M.gathered_bytes(d, e, run.processes, run.max_live_parameters, whole_model=True)
            for d in (run.actor, run.critic)
        )
        items.append(
            M.Item(
                "actor + critic gathered",
                gathered,
                "generation",
                note="ZeRO-3, for generate",
            )
        )
    return items


def _vllm_items(run: PPORun, vllm: VLLM) -> list[M.Item]:
    """A colocated engine: its weights and KV cache; with ``gpu_memory_utilization`` vLLM takes
    that share of the device for weights, KV cache and its own activations together."""
    phase = "generation" if vllm.sleep_mode else "always"
    weights = run.actor.params * vllm.weight_bytes
    if vllm.kv_cache_bytes is not None:
        cache, note = vllm.kv_cache_bytes, "kv_cache_memory_bytes"
    else:
        cache = vllm.gpu_memory_utilization * run.device_memory - weights
        note = f"{vllm.gpu_memory_utilization:g} of the device less weights"
    sleep = ", asleep outside generation" if vllm.sleep_mode else ""
    return [
        M.Item("vLLM weights", weights, phase, note=f"{vllm.weight_bytes} B/param{sleep}"),
        M.Item("vLLM KV cache", max(cache, 0.0), phase, note=note),
    ]


def _scoring_items(run: PPORun) -> list[M.Item]:
    """The no-grad forwards of ``make_experience``: actor, critic, reference and reward models run
    one after the other, so the phase holds the largest of them, plus ZeRO-3's gathered layers."""
    e, b, seq, t = run.e, run.rollout_sequences, run.seq, run.new_tokens
    passes = {
        "actor": M.forward_transient_bytes(run.actor, e, b, seq, run.attention)
        + M.scoring_logits_bytes(b, t + 1, run.actor.vocab, e),
        "critic": M.forward_transient_bytes(run.critic, e, b, seq, run.attention),
    }
    if run.reference is not None:
        passes["reference"] = M.forward_transient_bytes(
            run.reference, e, b, seq, run.attention
        ) + M.scoring_logits_bytes(b, t + 1, run.reference.vocab, e)
    for reward in run.rewards:
        rb, rs = min(reward.batch, b), min(reward.max_length, seq)
        passes[reward.name] = M.forward_transient_bytes(
            reward.dims, M.DTYPE_BYTES[run.dtype], rb, rs, run.attention
        )
    largest = max(passes, key=passes.get)
    items = [
        M.Item(
            f"forward pass ({largest})",
            passes[largest],
            "scoring",
            note=_tokens(b, seq) + " at once",
        )
    ]
    items += _gathered_items(run, "scoring")
    return items


def _training_items(run: PPORun) -> list[M.Item]:
    """One micro-batch: the actor's activations, then the larger of its logits' peak (during its
    own forward) and the critic's activations plus the logits it keeps (after the critic's
    forward) — :func:`memory.training_peak_bytes`."""
    e, b, seq, t = run.e, run.micro_batch, run.seq, run.new_tokens + 1
    ckpt = run.gradient_checkpointing
    actor, critic = (
        M.stored_activation_bytes(d, e, b, seq, ckpt, run.attention)
        for d in (run.actor, run.critic)
    )
    logits_peak = M.training_logits_bytes(b, t, run.actor.vocab, e)
    kept = M.kept_logits_bytes(b, t, run.actor.vocab)
    later = M.training_peak_bytes(actor, critic, logits_peak, kept) - actor
    what = "logits peak" if logits_peak >= critic + kept else "critic activations + kept logits"
    shape = _tokens(b, seq) + (", checkpointed" if ckpt else "")
    items = [
        M.Item("activations: actor", actor, "training", note=shape),
        M.Item(f"then: {what}", later, "training", note="the larger of the two moments"),
    ]
    return items + _gathered_items(run, "training")


def _gathered_items(run: PPORun, phase: str) -> list[M.Item]:
    if not (run.deepspeed and run.zero_stage == 3):
        return []
    gathered = max(
        M.gathered_bytes(d, run.e, run.processes, run.max_live_parameters, whole_model=False)
        for d in (run.actor, run.critic)
    )
    note = f"ZeRO-3, ≤ {run.max_live_parameters:,} live"
    return [M.Item("gathered parameters", gathered, phase, note=note)]


def _tokens(sequences: int, seq: int) -> str:
    return f"{sequences} sequence{'s' if sequences != 1 else ''} × {seq:,} tokens"
