"""The memory math of a training process, as pure functions of plain numbers (bytes).

Everything here is arithmetic on the sizes of a model (:class:`ModelDims`) and a run; nothing is
read, imported or measured. :mod:`align.plan.ppo` composes these into the items and phases of a
PPO step; :mod:`align.cli.plan` fills in the numbers from a config.

Sources of the formulas:

- **Model states** (weights, gradients, optimizer states) per parameter and how ZeRO partitions
  them: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
  Models", §3 and Fig. 1 — mixed-precision Adam keeps 2 + 2 + K bytes per parameter (16-bit
  weights, 16-bit gradients, K = 12 bytes of float32 master weights, momentum and variance);
  stage 1 divides the K bytes by the N processes, stage 2 also the gradients, stage 3 also the
  weights. How DeepSpeed 0.19 departs from the paper (no separate master copy when the weights
  are already float32 under stage 3; parameters of at most ``stage3_param_persistence_threshold``
  elements kept whole; the reduce bucket) and what plain PyTorch AdamW keeps (its states in the
  parameter's dtype) is read from their sources and stated at each function.
- **Activations**: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", §4.1: count every tensor a layer saves for its backward pass, per token.
  Their GPT layer (16-bit activations, dropout) saves ``sbh(34 + 5as/h)`` bytes; the same count
  for today's decoders (pre-norm RMSNorm computed in float32, rotary embeddings, grouped-query
  attention, gated MLP, no dropout, transformers' implementations) is
  :func:`layer_activation_bytes`. With full recomputation ("gradient checkpointing") a layer
  keeps only its input, ``2sbh`` bytes at 16 bits (their §4.2), and one layer's activations are
  rebuilt at a time in the backward pass.
- **Logits**: ``[b, T, V]`` tensors (the vocabulary dimension makes them as large as several
  layers), counted from the trainer's log-probability and entropy code
  (:func:`align.core.core_algos.logprobs_from_logits`, ``entropy_from_logits``).
- **KV cache**: ``2 · layers · kv_heads · head_dim`` values per token (keys and values).

Units: bytes (floats, since shards divide); ``b`` sequences, ``s`` tokens per sequence (prompt +
completion), ``T`` completion tokens, ``h`` hidden size, ``a`` attention heads, ``i`` MLP width,
``V`` vocabulary, ``L`` layers, ``N`` processes, ``e`` bytes per activation element.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

GIB = 2**30
MIB = 2**20

#: Bytes per element of each load / compute dtype.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: Mixed-precision names of accelerate configs and the dtype they compute in.
MIXED_PRECISION = {"bf16": "bfloat16", "fp16": "float16"}

#: DeepSpeed's defaults when the accelerate config gives none (deepspeed/runtime/zero/config.py).
DEEPSPEED_REDUCE_BUCKET = 500_000_000
DEEPSPEED_MAX_LIVE_PARAMETERS = 1_000_000_000
DEEPSPEED_PERSISTENCE_THRESHOLD = 100_000

#: When an item is resident: for the whole run, or only in one phase of a PPO step.
PHASES = ("always", "generation", "scoring", "training")


@dataclass(frozen=True)
class ModelDims:
    """One model as the memory math sees it; counted by :mod:`align.plan.models`.

    ``params``: every parameter; ``trainable``: those the optimizer updates (all of them, or the
    LoRA adapters plus a scalar head); ``small_params``: parameters in tensors of at most the
    ZeRO-3 persistence threshold (kept whole in every process); ``layer_params``: one decoder
    layer (what ZeRO-3 gathers at a time). ``gated_mlp``: SwiGLU/GeGLU (gate, up, down) rather
    than two linear layers.
    """

    params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated_mlp: bool = True
    trainable: int | None = None
    small_params: int = 0
    layer_params: int = 0

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def trainable_params(self) -> int:
        return self.params if self.trainable is None else self.trainable


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter of the model states: the weights the forward pass uses, their
    gradients, and the optimizer's states (float32 master weights included when kept apart)."""

    weights: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer


@dataclass(frozen=True)
class Item:
    """One line of a plan: ``bytes`` per process, resident in ``phase`` (see :data:`PHASES`)."""

    name: str
    bytes: float
    phase: str = "always"
    note: str = ""


# --------------------------------------------------------------------------- model states


def state_bytes(
    dtype: str, mixed_precision: str | None, deepspeed: bool, zero_stage: int
) -> StateBytes:
    """Bytes per trainable parameter of weights, gradients and AdamW states.

    - DeepSpeed with bf16/fp16 mixed precision: ``2 + 2 + 12`` (ZeRO paper, K = 12: float32
      master weights, momentum, variance).
    - DeepSpeed in the load dtype ``e`` bytes: weights and gradients ``e`` each, and
      ``4 + 8`` for the float32 master copy and Adam's states — except that stage 3 reuses float32
      weights as their own master copy (``stage3.py``: "we don't need another copy"), so float32
      under stage 3 is ``4 + 4 + 8``. Stages 1-2 always clone their float32 partition.
    - Plain PyTorch (no DeepSpeed, or stage 0): AdamW keeps momentum and variance in the
      parameter's dtype: ``e + e + 2e`` (``4 + 4 + 8`` in float32; accelerate's autocast mixed
      precision leaves the weights float32, so it is the same).
    """
    if not deepspeed or zero_stage == 0:
        e = DTYPE_BYTES[dtype]
        return StateBytes(e, e, 2 * e)
    if mixed_precision in MIXED_PRECISION:
        return StateBytes(2, 2, 12)
    e = DTYPE_BYTES[dtype]
    master = 0 if (zero_stage == 3 and e == 4) else 4
    return StateBytes(e, e, master + 8)


def shard(count: float, processes: int, whole: float = 0.0) -> float:
    """Elements one process holds of ``count`` partitioned over ``processes``, ``whole`` of them
    kept unpartitioned in every process (ZeRO-3's persistent small parameters)."""
    return whole + (count - whole) / processes


def trainable_model_bytes(
    dims: ModelDims, states: StateBytes, zero_stage: int, processes: int
) -> tuple[float, float, float]:
    """``(weights, gradients, optimizer states)`` bytes one process holds of a trained model.

    ZeRO paper, Fig. 1, with Ψ parameters (here only the trainable ones have gradients and
    optimizer states; frozen LoRA base weights have weights only):

    - stage 0: ``(w + g + o)·Ψ``; stage 1: ``(w + g)·Ψ + o·Ψ/N``; stage 2: ``w·Ψ + (g + o)·Ψ/N``;
    - stage 3: ``(w + g + o)·Ψ/N``, the weights of tensors below the persistence threshold whole.
    """
    n = processes if zero_stage >= 1 else 1
    trainable = dims.trainable_params
    if zero_stage == 3:
        weights = shard(dims.params, n, dims.small_params) * states.weights
    else:
        weights = dims.params * states.weights
    grads = trainable * states.grads / (n if zero_stage >= 2 else 1)
    optimizer = trainable * states.optimizer / n
    return weights, grads, optimizer


def frozen_model_bytes(
    dims: ModelDims, weight_bytes: float, zero_stage: int, processes: int
) -> float:
    """Bytes of a frozen model's weights in one process: partitioned under ZeRO-3 (TRL's
    ``prepare_deepspeed``), whole otherwise (it turns stages 1-2 into stage 0 for frozen models)."""
    if zero_stage == 3:
        return shard(dims.params, processes, dims.small_params) * weight_bytes
    return dims.params * weight_bytes


def zero_buffer_bytes(
    zero_stage: int, reduce_bucket: int, grad_bytes: float, trainable: int, host: bool
) -> float:
    """DeepSpeed's gradient reduce bucket (``reduce_bucket_size`` elements in the gradients'
    dtype; stage 3 allocates it at start, stages 1-2 at the first backward; ``overlap_comm`` is off
    by default below stage 3, so one bucket each).

    ``host``: count only the elements that gradients are ever copied into (at most the trainable
    parameters) — what host RSS shows, since untouched pages of an ``empty`` tensor are never
    mapped; a GPU allocates the whole bucket.
    """
    if zero_stage == 0:
        return 0.0
    elements = min(reduce_bucket, trainable) if host else reduce_bucket
    return elements * grad_bytes


def gathered_bytes(
    dims: ModelDims, weight_bytes: float, processes: int, max_live: int, whole_model: bool
) -> float:
    """Bytes ZeRO-3 gathers in one process beyond its shard: the whole model (``whole_model``,
    e.g. for ``generate`` under TRL's ``unwrap_model_for_generation``), or in a forward/backward
    pass up to ``stage3_max_live_parameters`` (DeepSpeed keeps gathered parameters it will reuse
    within ``stage3_max_reuse_distance``, 1e9 by default like the live limit) — an upper bound;
    lower both in the DeepSpeed config to gather less."""
    missing = (dims.params - dims.small_params) * (1 - 1 / processes)
    if whole_model:
        return missing * weight_bytes
    return min(missing, max_live) * weight_bytes


# --------------------------------------------------------------------------- activations


def norm_bytes_per_token(hidden: int, e: int) -> float:
    """A pre-norm (RMSNorm computed in float32, then scaled by its weight) saves three tensors
    per token: its float32 input, the normalised values in the activation dtype (for the weight's
    gradient) and the scaled output the next linear layers read — ``(4 + 2e)·h`` bytes (``12h``
    in float32, where the upcast is the input itself)."""
    return (4 + 2 * e) * hidden


def attention_score_bytes_per_token(heads: int, seq: int, e: int) -> float:
    """Eager attention's ``[b, a, s, s]`` probabilities: the float32 softmax output and, below
    float32, its cast to the activation dtype — ``a·s·(4 + e)`` per token (``a·s·4`` in float32).
    Memory-efficient kernels (sdpa, flash attention) keep only a float32 log-sum-exp per head."""
    return heads * seq * (4 + (e if e < 4 else 0))


def layer_activation_bytes(dims: ModelDims, e: int, seq: int, attention: str = "sdpa") -> float:
    """Bytes one decoder layer saves for its backward pass, per token (Korthikanti et al. 2022,
    §4.1, counted for a pre-norm decoder without dropout as transformers implements it):

    - two norms: ``2·(4 + 2e)·h`` (:func:`norm_bytes_per_token`);
    - attention with a fused kernel (sdpa, flash attention): ``e·(2q + 2kv) + 4a`` — query and
      key after the rotary embedding, value, the output (which the output projection reads in
      place) and a float32 log-sum-exp per head (``q = a·d``, ``kv = a_kv·d``); eager attention
      also keeps the output projection's input apart (``e·q``), the keys and values repeated
      for grouped-query attention (``e·2·(q - kv)``) and the ``s``-long score rows
      (:func:`attention_score_bytes_per_token`) instead of the log-sum-exp;
    - MLP: ``e·4i`` gated (gate and up outputs, the activation, their product) or ``e·2i``
      (the activation's input and output).

    For Llama-2-7B in 16 bits (``q = kv = h``, ``i ≈ 2.7h``) this is about ``45h`` bytes per
    token, against Korthikanti et al.'s ``34h`` for a GPT layer (float32 norms and the gated MLP
    cost more; no dropout masks).
    """
    if attention == "eager":
        attention_bytes = e * (3 * dims.q_dim + 2 * dims.kv_dim)
        attention_bytes += e * 2 * (dims.q_dim - dims.kv_dim)
        attention_bytes += attention_score_bytes_per_token(dims.heads, seq, e)
    else:
        attention_bytes = e * (2 * dims.q_dim + 2 * dims.kv_dim) + 4 * dims.heads
    mlp_bytes = e * (4 if dims.gated_mlp else 2) * dims.intermediate
    return 2 * norm_bytes_per_token(dims.hidden, e) + attention_bytes + mlp_bytes


def stored_activation_bytes(
    dims: ModelDims, e: int, batch: int, seq: int, checkpointing: bool, attention: str = "sdpa"
) -> float:
    """Activations a model keeps between its forward and backward pass for ``batch`` sequences of
    ``seq`` tokens: every layer's (:func:`layer_activation_bytes`) plus the final norm, or with
    gradient checkpointing each layer's input (``e·h`` per token; Korthikanti et al. §4.2) plus
    one layer recomputed in the backward pass."""
    tokens = batch * seq
    layer = layer_activation_bytes(dims, e, seq, attention)
    final_norm = norm_bytes_per_token(dims.hidden, e)
    if checkpointing:
        return tokens * (dims.layers * e * dims.hidden + layer + final_norm)
    return tokens * (dims.layers * layer + final_norm)


def forward_transient_bytes(
    dims: ModelDims, e: int, batch: int, seq: int, attention: str = "sdpa"
) -> float:
    """Peak working memory of a forward pass without gradients over ``batch × seq`` tokens (each
    layer frees its intermediates before the next): the residual stream and the norm's output,
    and in the MLP the activation, the up projection and their product, ``e·(3h + 3i)`` per token
    (gated; ``e·(3h + 2i)`` otherwise), plus eager attention's score rows."""
    mlp = (3 if dims.gated_mlp else 2) * dims.intermediate
    per_token = e * (3 * dims.hidden + mlp)
    if attention == "eager":
        per_token += attention_score_bytes_per_token(dims.heads, seq, e)
    return batch * seq * per_token


def training_logits_bytes(batch: int, completion: int, vocab: int, e: int) -> float:
    """Peak of the actor's output layer in a training micro-batch, ``b·T·V·(2e + 20)`` bytes:
    the logits (``e``), the float32 ``logits / temperature`` kept for the log-sum-exp's backward
    (4), and while the entropy is computed its input (``e``) and four float32 temporaries
    (log-softmax, its clamp, ``exp``, the product: 16) — ``align.core.core_algos``."""
    return batch * completion * vocab * (2 * e + 20)


def kept_logits_bytes(batch: int, completion: int, vocab: int) -> float:
    """What the actor's output layer keeps for its backward pass after the forward: the float32
    ``logits / temperature`` the log-sum-exp saves, ``4·b·T·V`` bytes (the entropy is computed
    without gradients, so its temporaries are gone by then)."""
    return batch * completion * vocab * 4


def training_peak_bytes(
    actor: float, critic: float, logits_peak: float, logits_kept: float
) -> float:
    """Activation memory of a training micro-batch at its peak. The actor's forward runs first
    (its log-probs and entropy briefly need ``logits_peak``), then the critic's: the two moments
    never coexist, so the peak is ``actor + max(logits_peak, critic + logits_kept)``. The
    backward pass frees activations as it creates gradients (counted apart), so it adds little
    on top (measured on CPU: ``bench/plan_check.py``)."""
    return actor + max(logits_peak, critic + logits_kept)


def scoring_logits_bytes(batch: int, completion: int, vocab: int, e: int) -> float:
    """Peak of the output layer when scoring ``b`` sequences without gradients: the logits
    (``e``) and, in float32, ``logits / temperature`` plus the log-sum-exp's ``exp`` temporary
    (8 more); below float32 the upcast goes one sequence at a time (``12·T·V``)."""
    per_row = completion * vocab
    if e == 4:
        return batch * per_row * 12
    return batch * per_row * e + per_row * 12


def kv_cache_bytes(dims: ModelDims, sequences: int, seq: int, e: int) -> float:
    """Keys and values of ``sequences × seq`` tokens: ``2·L·a_kv·d·e`` bytes per token."""
    return 2 * dims.layers * dims.kv_dim * e * sequences * seq


def generation_logits_bytes(sequences: int, vocab: int, e: int) -> float:
    """One decoding step's logits and the float32 log-softmax the sampler keeps per sequence
    (``rollouts.hf_generate``): about ``V·(e + 3·4)`` bytes per sequence."""
    return sequences * vocab * (e + 12)


# --------------------------------------------------------------------------- totals


def peak(items: Iterable[Item]) -> tuple[float, str]:
    """``(bytes, phase)``: the items resident ``always`` plus the largest phase's items, and that
    phase (``"always"`` when no phase adds anything)."""
    items = list(items)
    always = sum(i.bytes for i in items if i.phase == "always")
    by_phase = {p: sum(i.bytes for i in items if i.phase == p) for p in PHASES[1:]}
    phase = max(by_phase, key=by_phase.get, default="always")
    if not by_phase or by_phase[phase] <= 0:
        return always, "always"
    return always + by_phase[phase], phase


def phase_totals(items: Iterable[Item]) -> dict[str, float]:
    """Bytes resident in each phase: the ``always`` items plus that phase's own."""
    items = list(items)
    always = sum(i.bytes for i in items if i.phase == "always")
    return {p: always + sum(i.bytes for i in items if i.phase == p) for p in PHASES[1:]}
