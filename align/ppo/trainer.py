"""PPO with four models: actor, reference, critic and reward functions (docs/methods.md §1).

One PPO step:

1. draw ``rollout_batch_size`` prompts (category mixture weights), generate ``samples_per_prompt``
   completions each through the :class:`~rollouts.base.RolloutEngine`;
2. without gradients: actor logprobs (old), reference logprobs, critic values, reward scores;
3. per-token rewards ``-β·KL_t`` plus the score at the last token; the advantage estimator of
   ``advantage_estimator`` (GAE with the critic's values; or a critic-free one: GRPO, Dr. GRPO,
   RLOO, REINFORCE++ (+baseline), with no critic built and no value pass); whitening;
4. ``ppo_epochs`` × ``num_minibatches`` optimizer steps of actor and critic (one AdamW, their
   learning rates as two parameter groups), each over micro-batches with the loss normalised by
   the minibatch's token count.

Memory knobs: ``gradient_checkpointing`` (actor and critic, non-reentrant), micro-batches of
``micro_batch_size`` rows or by ``max_tokens_per_micro_batch`` (each trimmed of the columns that
are padding in all its rows), ``offload_frozen_models`` (reference and reward models on the CPU
except while they score). Logprobs, values, advantages, KL and losses are float32 whatever the
models' dtype.

The math lives in :mod:`align.core.core_algos`; this module orchestrates.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from accelerate.utils import gather_object
from transformers import TrainerState

from align.core import core_algos as ca
from align.core import distributed
from align.core.chat_formats import get_chat_format, save_tokenizer
from align.core.checkpoints import atomic_checkpoint, load_data_only, restore_accelerate_state
from align.core.data import messages_of
from align.core.io import METRICS_FILE, MetricsFile, open_metrics
from align.core.mixture import MixtureSampler
from align.core.tensors import pack_by_token_budget, split_to_count
from align.core.tracking import Tracker
from align.ppo.config import PPOConfig
from align.ppo.online_filter import online_filter_of
from rm.functions import LocalRewardModel, WeightedReward, reward_inputs, score_rewards
from rm.model import token_scores
from rollouts.base import RolloutBatch, RolloutEngine, SamplingParams, left_pad, right_pad
from rollouts.weight_sync import join_gathers


@dataclass
class Experience:
    """One rollout batch, N = prompts × samples, P = prompt width, T = completion width.

    ``input_ids``/``attention_mask``/``position_ids`` are ``[N, P+T]`` (prompt left-padded,
    completion right-padded); the other tensors are ``[N, T]`` over completion tokens, except
    ``scores`` ``[N]``. ``values`` and ``returns`` are None without a critic.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor | None
    scores: torch.Tensor
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    rollout_logprobs: torch.Tensor | None = None  # the engine's sampling logprobs [N, T]
    is_weights: torch.Tensor | None = None  # truncated importance weights [N, T] (tis_cap)

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, -self.mask.shape[1] :]

    def select(self, index: torch.Tensor) -> Experience:
        return Experience(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                for f in fields(self)
            }
        )

    def lengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompt, completion)`` attended tokens of each row, ``[N]`` each (a dropped
        sample's completion still counts: it goes through the models)."""
        prompt_width = self.input_ids.shape[1] - self.mask.shape[1]
        attention = self.attention_mask.bool()
        return attention[:, :prompt_width].sum(1), attention[:, prompt_width:].sum(1)

    def trimmed(self) -> Experience:
        """The same rows without the columns that are padding in every row: the prompt's left
        padding and the completion's right padding (at least one completion column stays).
        Positions are kept, and padded keys get no attention weight, so every logprob, value
        and loss is unchanged; only the padded work goes."""
        width = self.mask.shape[1]
        prompt_width = self.input_ids.shape[1] - width
        prompt_len, completion_len = (int(x.max()) for x in self.lengths())
        keep = min(max(completion_len, 1), width)
        columns = slice(prompt_width - prompt_len, prompt_width + keep)
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SEQUENCE_FIELDS:
                value = value[:, columns]
            elif value is not None and value.dim() == 2:  # [N, T] over completion tokens
                value = value[:, :keep]
            out[f.name] = value
        return Experience(**out)


class CriticDivergedError(FloatingPointError):
    """The critic's values are not finite, or explain the returns worse than
    ``critic_min_explained_variance`` for ``critic_divergence_patience`` steps in a row."""


#: Experience fields over prompt + completion columns (the others are over completion tokens).
SEQUENCE_FIELDS = ("input_ids", "attention_mask", "position_ids")


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters (a ZeRO-3 partitioned one counts whole: ``ds_numel``)."""
    sizes = [(p.requires_grad, getattr(p, "ds_numel", p.numel())) for p in model.parameters()]
    return sum(n for trainable, n in sizes if trainable), sum(n for _, n in sizes)


def build_sequences(
    prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids [N, P+T], attention_mask, position_ids, completion_mask [N, T])``.

    Positions count attended tokens only, so a left-padded prompt sees the same positions as an
    unpadded one.
    """
    p_ids, p_mask = left_pad(prompt_ids, pad_id)
    c_ids, c_mask = right_pad(completion_ids, pad_id)
    attention_mask = torch.cat([p_mask, c_mask.long()], dim=1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return torch.cat([p_ids, c_ids], dim=1), attention_mask, position_ids, c_mask


def completion_logprobs(
    model: torch.nn.Module, exp: Experience, temperature: float, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[N, T]`` logprobs of the completion tokens under ``softmax(logits / temperature)``.

    Only the last T+1 positions go through the output layer (prompt logits are never needed).
    """
    width = exp.mask.shape[1]
    logits = model(
        input_ids=exp.input_ids,
        attention_mask=exp.attention_mask,
        position_ids=exp.position_ids,
        logits_to_keep=width + 1,
        use_cache=False,  # a teacher-forced pass: no KV cache to keep
    ).logits[:, :-1]
    logprobs = ca.logprobs_from_logits(logits, exp.completion_ids, temperature)
    # entropy is only reported: no autograd graph over [N, T, V]
    entropy = ca.entropy_from_logits(logits.detach() / temperature) if with_entropy else None
    return logprobs, entropy


def completion_values(critic: torch.nn.Module, exp: Experience) -> torch.Tensor:
    """``[N, T]`` values: V_t is read at the token before completion token t (the state)."""
    width = exp.mask.shape[1]
    values = token_scores(critic, exp.input_ids, exp.attention_mask, exp.position_ids)
    return values[:, -width - 1 : -1]


#: torch.utils.checkpoint's non-reentrant variant: works with frozen inputs (LoRA), DDP and
#: DeepSpeed, and recomputes one layer at a time.
NON_REENTRANT = {"use_reentrant": False}


@contextmanager
def without_checkpointing(model: torch.nn.Module):
    """``model`` with gradient checkpointing off inside the block (``generate`` needs its KV
    cache, which checkpointing in training mode turns off)."""
    enabled = bool(getattr(model, "is_gradient_checkpointing", False))
    if enabled:
        model.gradient_checkpointing_disable()
    try:
        yield model
    finally:
        if enabled:
            model.gradient_checkpointing_enable()


class ActorCritic(torch.nn.Module):
    """Actor and critic as one module, so one ``accelerator.prepare`` (DDP or one DeepSpeed
    engine) covers both and one forward computes logprobs, entropy and values together.
    ``critic`` None (a critic-free advantage estimator): the forward's values are None."""

    def __init__(self, actor: torch.nn.Module, critic: torch.nn.Module | None) -> None:
        super().__init__()
        self.actor, self.critic = actor, critic
        self.checkpointing_kwargs: dict = dict(NON_REENTRANT)

    def trained_models(self) -> list[torch.nn.Module]:
        """The actor, and the critic when there is one."""
        return [m for m in (self.actor, self.critic) if m is not None]

    @property
    def is_gradient_checkpointing(self) -> bool:  # read by TRL's unwrap_model_for_generation
        return bool(getattr(self.actor, "is_gradient_checkpointing", False))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None):
        """Checkpointing in actor and critic, non-reentrant unless told otherwise. TRL's
        ``unwrap_model_for_generation`` disables it for generation and enables it again without
        kwargs: the kwargs given first are kept. Non-reentrant checkpointing needs no input
        gradients, so frozen embeddings under LoRA still pass gradients to the adapters."""
        if gradient_checkpointing_kwargs is not None:
            self.checkpointing_kwargs = dict(gradient_checkpointing_kwargs)
        for model in self.trained_models():
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=dict(self.checkpointing_kwargs)
            )

    def gradient_checkpointing_disable(self) -> None:
        for model in self.trained_models():
            model.gradient_checkpointing_disable()

    def forward(self, exp: Experience, temperature: float, with_entropy: bool = False):
        """``(logprobs [N, T], entropy [N, T] | None, values [N, T] | None)``."""
        logprobs, entropy = completion_logprobs(self.actor, exp, temperature, with_entropy)
        values = None if self.critic is None else completion_values(self.critic, exp)
        return logprobs, entropy, values


def frozen_reward_models(rewards: Sequence[WeightedReward]) -> list[torch.nn.Module]:
    """The torch models behind ``type: model`` rewards (:class:`rm.functions.LocalRewardModel`)."""
    return [r.fn.model for r in rewards if isinstance(r.fn, LocalRewardModel)]


def movable(module: torch.nn.Module) -> torch.nn.Module | None:
    """What moves when a frozen model changes device: the module itself; the module inside a
    DeepSpeed engine of ZeRO stage 0–2 (TRL's ``prepare_deepspeed`` builds the reference at
    stage 0 then); nothing for a ZeRO-3 engine, whose partitions DeepSpeed places itself."""
    stage = getattr(module, "zero_optimization_stage", None)  # only DeepSpeed engines have it
    if stage is None:
        return module
    return None if stage() == 3 else module.module


def place(modules: Sequence[torch.nn.Module], device: torch.device | str) -> None:
    """Move every :func:`movable` part of ``modules`` to ``device``."""
    for module in modules:
        part = movable(module)
        if part is not None:
            part.to(device)


@contextmanager
def zero3_frozen_offload(accelerator, enabled: bool) -> Iterator[None]:
    """With ``enabled`` (``offload_frozen_models``) under DeepSpeed ZeRO-3, the frozen engines
    built inside (TRL's ``prepare_deepspeed``: reference, reward models) keep their parameter
    partitions in CPU memory and fetch a layer's only while it runs (DeepSpeed's
    ``offload_param``); the config is as it was afterwards, so the training engine keeps its
    own. No-op otherwise (stage 0–2 frozen engines are whole copies: :func:`placed_on` moves
    them)."""
    zero = {}
    if enabled and accelerator.distributed_type == "DEEPSPEED":
        zero = accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]
    if zero.get("stage") != 3:
        yield
        return
    saved = zero.get("offload_param")
    zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    try:
        yield
    finally:
        if saved is None:
            zero.pop("offload_param")
        else:
            zero["offload_param"] = saved


@contextmanager
def placed_on(
    modules: Sequence[torch.nn.Module], device: torch.device | str, home: torch.device | str
) -> Iterator[None]:
    """``modules`` on ``device`` inside the block and back on ``home`` after it (also when it
    raises); nothing moves when the two are the same device (a CPU run, or no offloading)."""
    if torch.device(device) == torch.device(home):
        yield
        return
    place(modules, device)
    try:
        yield
    finally:
        place(modules, home)


class PPOTrainer:
    """Orchestrates one PPO run; models and data come built (see :mod:`align.ppo.run`).

    ``rollout_batch_size`` is global: each of the W processes generates for its share of the
    prompts, advantages are whitened with global statistics and losses are normalised by the
    global token count, so W processes follow the same trajectory as one.
    """

    def __init__(
        self,
        cfg: PPOConfig,
        actor: torch.nn.Module,
        reference: torch.nn.Module | None,
        critic: torch.nn.Module | None,
        tokenizer,
        rewards: list[WeightedReward],
        prompts: list[dict],
        engine: RolloutEngine,
        eval_prompts: list[dict] | None = None,
        accelerator=None,
    ) -> None:
        self.cfg, self.tokenizer, self.rewards, self.engine = cfg, tokenizer, rewards, engine
        self.accelerator = accelerator or make_accelerator(cfg)
        world = self.accelerator.num_processes
        if cfg.rollout_batch_size % world:
            raise ValueError(
                f"rollout_batch_size: expected a multiple of the {world} processes, "
                f"got {cfg.rollout_batch_size}"
            )
        self.prompts, self.eval_prompts = prompts, eval_prompts or []
        self.truncated_prompts = 0
        self.prompt_ids = [self._encode_prompt(r) for r in prompts]
        self.sampler = MixtureSampler(
            [r["category"] for r in prompts], cfg.category_weights, seed=cfg.seed
        )
        # drops uninformative prompt groups and refills them; None when off (online_filter.py)
        self.online_filter = online_filter_of(cfg, self.sampler.categories)
        self.param_counts = {
            f"params/{name}_{kind}": count
            for name, model in (("actor", actor), ("critic", critic))
            if model is not None
            for kind, count in zip(("trainable", "total"), parameter_counts(model))
        }
        actor_critic = ActorCritic(actor, critic)
        if cfg.gradient_checkpointing:
            actor_critic.gradient_checkpointing_enable()
        self.model, self.optimizer, self.scheduler = self._prepare(actor_critic)
        # frozen models live here between their forwards: the CPU with offload_frozen_models
        self.frozen_home = (
            torch.device("cpu") if cfg.offload_frozen_models else self.accelerator.device
        )
        self.reward_models = frozen_reward_models(rewards)
        place(self.reward_models, self.frozen_home)
        self.reference = self._prepare_reference(reference)
        self.kl_ctl = (
            ca.AdaptiveKLController(cfg.beta, cfg.kl_target, cfg.kl_horizon)
            if cfg.kl_target
            else ca.FixedKLController(cfg.beta)
        )
        self.score_stats = ca.RunningMoments()
        self.estimator = ca.ADVANTAGE_ESTIMATORS[cfg.advantage_estimator]
        self.critic_bad_steps = 0  # steps in a row below critic_min_explained_variance
        self.estimator_metrics: dict[str, float] = {}  # this step's, from compute_advantages
        self.step, self.bad_steps = 0, 0
        self.non_finite: set[str] = set()  # what was not finite in the current run of bad steps
        self.synced_at_step: int | None = None
        self.out = Path(cfg.output_dir)
        self.tracker = Tracker()  # opened by train() on the main process
        self.sampling = SamplingParams(
            max_new_tokens=cfg.max_new_tokens,
            top_k=cfg.top_k,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
        )

    # ------------------------------------------------------------ set-up helpers

    def _encode_prompt(self, record: dict) -> list[int]:
        ids, truncated = get_chat_format(self.cfg.chat_format).encode_prompt(
            messages_of(record), self.tokenizer, self.cfg.max_prompt_length
        )
        self.truncated_prompts += truncated
        if not ids:
            raise ValueError(f"prompt {record.get('id', '?')} encodes to no tokens")
        return ids

    def _prepare(self, model: ActorCritic):
        """One AdamW with the actor's and the critic's learning rates as two parameter groups
        (one without a critic)."""
        from transformers import get_scheduler  # lazy: transformers.optimization loads peft

        cfg = self.cfg
        groups = [
            {"params": [p for p in part.parameters() if p.requires_grad], "lr": lr}
            for part, lr in ((model.actor, cfg.actor_lr), (model.critic, cfg.critic_lr))
            if part is not None  # no critic: one group
        ]
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        per_step = cfg.ppo_epochs * cfg.num_minibatches
        scheduler = get_scheduler(
            "constant_with_warmup",
            optimizer,
            num_warmup_steps=cfg.warmup_steps * per_step,
            num_training_steps=cfg.total_steps * per_step,
        )
        # the trainer accumulates over micro-batches itself (_backward marks the boundary)
        distributed.configure_deepspeed(
            self.accelerator,
            cfg.micro_batch_size,
            gradient_clipping=cfg.max_grad_norm,
            gradient_accumulation_steps=1,
        )
        return self.accelerator.prepare(model, optimizer, scheduler)

    def _prepare_reference(self, reference: torch.nn.Module | None):
        """Frozen reference on :attr:`frozen_home`; ``None`` means the actor with its LoRA
        adapters disabled. Under DeepSpeed it is TRL's frozen engine (ZeRO-3: sharded like the
        actor; otherwise stage 0, a whole copy per process)."""
        if reference is None:
            return None
        reference.eval().requires_grad_(False)
        if self.accelerator.distributed_type == "DEEPSPEED":
            from trl.models import prepare_deepspeed  # lazy: trl loads peft; DeepSpeed only

            with zero3_frozen_offload(self.accelerator, self.cfg.offload_frozen_models):
                reference = prepare_deepspeed(reference, self.accelerator)
        place([reference], self.frozen_home)
        return reference

    def _frozen_on_device(self, modules: Sequence[torch.nn.Module]):
        """``modules`` on the accelerator's device inside the block, on :attr:`frozen_home`
        outside it (nothing moves unless ``offload_frozen_models`` on an accelerator)."""
        return placed_on(modules, self.accelerator.device, self.frozen_home)

    # ------------------------------------------------------------ experience

    @contextmanager
    def _timer(self, times: dict, name: str):
        started = time.perf_counter()
        yield
        times[f"time/{name}"] = time.perf_counter() - started

    def _generate(
        self,
        prompt_ids: list[list[int]],
        sampling: SamplingParams,
        n: int,
        times: dict | None = None,
        force_sync: bool = False,
    ):
        """Generate with the engine, first syncing the actor's weights into it when due: at the
        first call, every ``sync_every`` steps, and when ``force_sync`` (evaluation)."""
        with self._model_for_generation() as unwrapped:
            if self._sync_due(force_sync):
                started = time.perf_counter()
                self._sync_engine(unwrapped.actor)
                self.synced_at_step = self.step
                if times is not None:
                    times["time/weight_sync"] = time.perf_counter() - started
            return self.engine.generate(prompt_ids, sampling, n)

    def _model_for_generation(self):
        """The unwrapped ActorCritic: as it is for an engine with its own weights (vLLM, synced
        layer by layer, so ZeRO-3 never gathers the whole model); for ``generate`` on the
        actor itself, without gradient checkpointing and, under DeepSpeed, gathered (TRL)."""
        if getattr(self.engine, "holds_own_weights", False):
            return nullcontext(self.accelerator.unwrap_model(self.model))
        if self.accelerator.distributed_type != "DEEPSPEED":
            return without_checkpointing(self.accelerator.unwrap_model(self.model))
        from trl.models import unwrap_model_for_generation  # lazy: trl loads peft (DeepSpeed only)

        return unwrap_model_for_generation(self.model, self.accelerator)

    def _sync_engine(self, actor: torch.nn.Module) -> None:
        """A shared engine (a server) is synced once, by the main process (under ZeRO-3 the
        others take part in its layer-by-layer gathers); nobody generates before it has the
        new weights."""
        if not getattr(self.engine, "shared", False):
            self.engine.sync_weights(actor)
            return
        if self.accelerator.is_main_process:
            self.engine.sync_weights(actor)
        else:
            join_gathers(actor)
        self.accelerator.wait_for_everyone()

    def _sync_due(self, force: bool) -> bool:
        if self.synced_at_step is None:
            return True
        if self.synced_at_step == self.step:  # weights only change between steps
            return False
        return force or self.step - self.synced_at_step >= self.cfg.rollout.sync_every

    def _reference_logprobs(self, exp: Experience) -> torch.Tensor:
        if self.reference is not None:
            with self._frozen_on_device([self.reference]):
                return completion_logprobs(self.reference, exp, self.cfg.temperature)[0]
        actor = self.accelerator.unwrap_model(self.model).actor
        with actor.disable_adapter():
            return completion_logprobs(actor, exp, self.cfg.temperature)[0]

    def _trainer_state(self) -> TrainerState:
        """What TRL hands reward functions as ``trainer_state``: the step about to be taken."""
        return TrainerState(global_step=self.step, max_steps=self.cfg.total_steps)

    @torch.no_grad()
    def make_experience(self, rows: list[dict], prompt_ids: list[list[int]], times: dict):
        """Generate, score and evaluate this process's share; returns (Experience, info)."""
        n = self.cfg.samples_per_prompt
        with self._timer(times, "generate"):
            batch: RolloutBatch = self._generate(prompt_ids, self.sampling, n, times)
        ids, attn, pos, mask = build_sequences(
            batch.prompt_ids, batch.completion_ids, self.tokenizer.pad_token_id
        )
        dev = self.accelerator.device
        exp = Experience(ids.to(dev), attn.to(dev), pos.to(dev), mask.to(dev), *([None] * 4))
        sample_rows = [r for r in rows for _ in range(n)]
        with self._timer(times, "reward"):
            texts = self.tokenizer.batch_decode(batch.completion_ids, skip_special_tokens=True)
            prompts, columns = reward_inputs(sample_rows)
            columns.update(prompt_ids=batch.prompt_ids, completion_ids=batch.completion_ids)
            with self._frozen_on_device(self.reward_models):
                scored = score_rewards(self.rewards, prompts, texts, columns,
                                       extras={"trainer_state": self._trainer_state()})  # fmt: skip
            scores, parts = scored.total, scored.parts
            exp.mask = exp.mask & scored.kept.to(dev)[:, None]  # dropped samples: no tokens
        truncated = torch.tensor([f == "length" for f in batch.finish_reasons])
        if self.cfg.missing_eos_penalty is not None:
            scores = scores - self.cfg.missing_eos_penalty * truncated.float()
        self.model.eval()
        with self._timer(times, "policy_value_forward"):
            exp.old_logprobs, _, exp.values = self.model(exp, self.cfg.temperature)
        gap = self._logprob_gap(batch, exp.old_logprobs, mask.to(dev))
        if self.cfg.tis_cap is not None:  # the engine's sampling logprobs, for TIS weights
            exp.rollout_logprobs = batch.padded_completions(0)[1].to(exp.old_logprobs)
        with self._timer(times, "reference"):
            exp.ref_logprobs = self._reference_logprobs(exp)
        exp.scores = scores.to(dev)
        info = {
            "parts": parts,
            "dropped": ~scored.kept,
            "truncated": truncated,
            "lengths": mask.sum(1),
            "categories": [r["category"] for r in sample_rows],
            "logprob_gap": gap,
        }
        return exp, info

    @staticmethod
    def _logprob_gap(
        batch: RolloutBatch, trainer_logprobs: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sum, count, max)`` of |engine logprob − trainer logprob| over completion tokens:
        the engine's sampling logprobs against the teacher-forced forward of the same tokens
        (stale or wrongly synced weights show up here)."""
        _, engine_logprobs, _ = batch.padded_completions(0)
        diff = (engine_logprobs.to(trainer_logprobs) - trainer_logprobs).abs() * mask
        return diff.sum(), mask.sum(), diff.max() if diff.numel() else diff.new_zeros(())

    def _global_sum(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        stacked = torch.stack([x.detach().double().reshape(()) for x in xs])
        if self.accelerator.num_processes > 1:
            stacked = self.accelerator.reduce(stacked, reduction="sum")
        return list(stacked)

    def _sum_over_processes(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (any shape) summed over every process, added up in float64; same shape, dtype
        and device (the ``reduce`` of :func:`align.core.core_algos.masked_whiten`)."""
        return torch.stack(self._global_sum(*x.reshape(-1))).reshape(x.shape).to(x)

    def compute_advantages(self, exp: Experience) -> torch.Tensor:
        """Scores (normalised, clipped), then the ``advantage_estimator`` over the per-token KL
        rewards, whitened as the estimator says (globally); then the truncated importance
        weights (``tis_cap``) and the critic's diagnostics. Fills ``exp.advantages``,
        ``returns`` (None without a critic) and ``is_weights``, and :attr:`estimator_metrics`;
        returns KL [N, T]."""
        cfg = self.cfg
        scores = exp.scores
        if cfg.normalize_rewards:
            # Dropped samples (no tokens left in the mask) carry only a placeholder score.
            kept = self.accelerator.gather(exp.mask.any(dim=1))
            self.score_stats.update(self.accelerator.gather(scores)[kept])
            scores = self.score_stats.normalize(scores)
        if cfg.score_clip is not None:
            scores = scores.clamp(min=-cfg.score_clip, max=cfg.score_clip)
        kl = ca.kl_penalty(exp.old_logprobs, exp.ref_logprobs, exp.mask, cfg.kl_estimator)
        advantages, returns = self.estimator.estimate(
            scores,
            -self.kl_ctl.value * kl,
            exp.values,
            exp.mask,
            group_size=cfg.samples_per_prompt,  # a prompt's answers are adjacent rows
            gamma=cfg.gamma,
            lam=cfg.lam,
        )
        whiten = self.estimator.whiten
        if whiten or (whiten is None and cfg.whiten_advantages):
            advantages = ca.masked_whiten(advantages, exp.mask, reduce=self._sum_over_processes)
        exp.advantages, exp.returns = advantages, returns
        self.estimator_metrics = {**self._importance_weights(exp), **self._critic_metrics(exp)}
        return kl

    def _importance_weights(self, exp: Experience) -> dict[str, float]:
        """``exp.is_weights`` from the engine's sampling logprobs (``tis_cap``); returns their
        global mean, the share of tokens at the cap and the largest weight before it."""
        if self.cfg.tis_cap is None:
            return {}
        exp.is_weights, stats = ca.truncated_is_weights(
            exp.old_logprobs, exp.rollout_logprobs, exp.mask, self.cfg.tis_cap
        )
        n = exp.mask.sum()
        weight, capped, count = self._global_sum(
            stats["tis_weight"] * n, stats["tis_capped"] * n, n
        )
        peak = stats["tis_raw_max"]
        if self.accelerator.num_processes > 1:
            peak = self.accelerator.gather(peak.reshape(1)).max()
        count = count.clamp(min=1)
        return {
            "policy/tis_weight_mean": float(weight / count),
            "policy/tis_capped_frac": float(capped / count),
            "policy/tis_raw_weight_max": float(peak),
        }

    def _critic_metrics(self, exp: Experience) -> dict[str, float]:
        """Explained variance of the returns by the rollout's values and their mean squared
        error (global); stops the run when the critic diverges (:meth:`_check_critic`)."""
        if exp.values is None:
            return {}
        (bad,) = self._global_sum((~torch.isfinite(exp.values) & exp.mask).sum())
        if bad > 0:
            raise CriticDivergedError(
                f"critic diverged at step {self.step + 1}: {int(bad)} non-finite values; lower "
                f"critic_lr, raise critic_warmup_steps or check the critic initialisation"
            )
        reduce = self._sum_over_processes
        ev = float(ca.explained_variance(exp.values, exp.returns, exp.mask, reduce=reduce))
        error = ca.masked_moments((exp.values - exp.returns) ** 2, exp.mask, reduce=reduce)[0]
        self._check_critic(ev)
        return {"critic/explained_variance": ev, "critic/value_error": float(error)}

    def _check_critic(self, explained_variance: float) -> None:
        """``critic_divergence_patience`` steps in a row with the explained variance below
        ``critic_min_explained_variance`` raise :class:`CriticDivergedError` (NaN, returns that
        do not vary, breaks the run of steps)."""
        floor = self.cfg.critic_min_explained_variance
        if floor is None:
            return
        self.critic_bad_steps = self.critic_bad_steps + 1 if explained_variance < floor else 0
        if self.critic_bad_steps >= self.cfg.critic_divergence_patience:
            raise CriticDivergedError(
                f"critic diverged: explained variance below critic_min_explained_variance "
                f"{floor} for {self.critic_bad_steps} PPO steps in a row (the last at step "
                f"{self.step + 1}: {explained_variance:.4f}); lower critic_lr, raise "
                f"critic_warmup_steps or critic_updates_per_step, or check the critic "
                f"initialisation"
            )

    # ------------------------------------------------------------ optimisation

    def _micro_losses(self, mb: Experience, norm: tuple[torch.Tensor, torch.Tensor]):
        """Losses normalised by the global token and sequence counts ``norm`` (``loss_agg_mode``),
        times W because DDP and DeepSpeed average gradients over processes: the gradient is then
        that of one big batch. Without a critic the value loss is 0 and not reported."""
        cfg = self.cfg
        num_tokens, num_seqs = norm
        logprobs, entropy, values = self.model(mb, cfg.temperature, with_entropy=True)
        pg, pg_stats = ca.policy_loss(
            logprobs,
            mb.old_logprobs,
            mb.advantages,
            mb.mask,
            cfg.clip_eps if cfg.clip_eps_low is None else cfg.clip_eps_low,
            cfg.dual_clip,
            clip_eps_high=cfg.clip_eps if cfg.clip_eps_high is None else cfg.clip_eps_high,
            is_weights=mb.is_weights,
        )
        scale = self.accelerator.num_processes
        pg_loss = scale * ca.aggregate(
            pg, mb.mask, num_tokens, cfg.loss_agg_mode, num_seqs, norm_length=cfg.max_new_tokens
        )
        share = mb.mask.sum() / num_tokens  # this micro-batch's share of the global tokens
        stats = {
            "policy/approxkl_avg": pg_stats["approxkl"] * share,
            "policy/clipfrac_avg": pg_stats["clipfrac"] * share,
            "val/ratio": pg_stats["ratio"] * share,
            "policy/entropy_avg": ca.masked_mean(entropy, mb.mask) * share,
            "loss/policy_avg": pg_loss.detach() / scale,
        }
        if values is None:
            return pg_loss, torch.zeros((), device=pg_loss.device), stats
        vf, vf_stats = ca.value_loss(values, mb.values, mb.returns, mb.mask, cfg.value_clip_eps)
        vf_loss = cfg.vf_coef * ca.aggregate(vf, mb.mask, num_tokens) * scale
        stats["val/clipfrac_avg"] = vf_stats["vf_clipfrac"] * share
        stats["loss/value_avg"] = vf_loss.detach() / scale
        return pg_loss, vf_loss, stats

    def _clip_gradients(self) -> torch.Tensor:
        """Clip the actor's and the critic's gradients to ``max_grad_norm`` each; returns their
        norms before clipping, ``[2]`` (``[1]`` without a critic) float64 on the CPU. DeepSpeed
        clips in its own step (and skips a step whose norm is not finite): its global norm then
        stands for both."""
        acc, limit = self.accelerator, self.cfg.max_grad_norm
        if acc.distributed_type == "DEEPSPEED":
            norm = acc.clip_grad_norm_(self.model.parameters(), limit)  # the engine's, no clipping
            return torch.full((2,), 0.0 if norm is None else float(norm), dtype=torch.float64)
        models = acc.unwrap_model(self.model).trained_models()
        norms = [acc.clip_grad_norm_(m.parameters(), limit) for m in models]
        return torch.stack([torch.as_tensor(n, dtype=torch.float64).cpu() for n in norms])

    def _micro_batches(self, minibatch: Experience) -> list[Experience]:
        """The minibatch's micro-batches, each trimmed of its all-padding columns
        (:meth:`Experience.trimmed`): ``micro_batch_size`` rows each, or packed by padded tokens
        within ``max_tokens_per_micro_batch`` (:func:`~align.core.tensors.pack_by_token_budget`,
        longest rows first) and then split until every process has as many micro-batches as
        the one with the most. Every backward pass is a collective (DDP's gradient all-reduce,
        DeepSpeed's reduce-scatter), so processes with different counts would hang."""
        n, budget = minibatch.mask.shape[0], self.cfg.max_tokens_per_micro_batch
        if budget is None:
            groups = list(torch.arange(n).split(self.cfg.micro_batch_size))
        else:
            groups = pack_by_token_budget(*minibatch.lengths(), budget)
            groups = split_to_count(groups, self._most_over_processes(len(groups)))
        device = minibatch.mask.device
        return [minibatch.select(g.to(device)).trimmed() for g in groups]

    def _most_over_processes(self, count: int) -> int:
        """The largest ``count`` any process has."""
        if self.accelerator.num_processes == 1:
            return count
        counts = self.accelerator.gather(torch.tensor([count], device=self.accelerator.device))
        return int(counts.max())

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        """``accelerator.backward``. Under DeepSpeed that is also the engine's step at an
        accumulation boundary, so every micro-batch but the ``last`` is marked as inside the
        accumulation: one optimizer step per minibatch, as without DeepSpeed."""
        acc = self.accelerator
        if acc.distributed_type == "DEEPSPEED":
            acc.sync_gradients = last
        try:
            acc.backward(loss)
        finally:
            acc.sync_gradients = True

    def _accumulate_gradients(
        self, minibatch: Experience, with_actor: bool = True
    ) -> tuple[dict[str, torch.Tensor], bool]:
        """Forward and backward over the minibatch's micro-batches, gradients summed; returns
        the summed stats and whether every loss was finite. Each loss is normalised by the
        minibatch's global token (and sequence) count, so how the rows are split does not
        change the sum. ``with_actor`` False: the policy loss weighs 0 (a critic-only step;
        it stays in the graph so DDP sees every parameter used)."""
        valid = minibatch.mask
        norm = self._global_sum(valid.sum(), valid.any(dim=1).sum())
        norm = tuple(x.float().clamp(min=1).to(valid.device) for x in norm)
        totals: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
        finite = True
        batches = self._micro_batches(minibatch)
        for i, mb in enumerate(batches):
            pg_loss, vf_loss, stats = self._micro_losses(mb, norm)
            finite = finite and bool(torch.isfinite(pg_loss) and torch.isfinite(vf_loss))
            if not with_actor:
                pg_loss = pg_loss * 0.0
            self._backward(pg_loss + vf_loss, last=i == len(batches) - 1)
            for k, v in stats.items():
                totals[k] += v.detach().double().cpu()
        return totals, finite

    def _optimizer_step(
        self, minibatch: Experience, with_actor: bool = True, schedule: bool = True
    ) -> dict[str, torch.Tensor] | str:
        """One step over a minibatch in micro-batches; returns its stats. When a loss or a
        gradient norm is not finite on any process, every process skips the step together and
        it returns what was not finite: ``"loss"`` or ``"gradient norm"``. ``with_actor``
        False: a critic-only step (the actor does not move); ``schedule`` False: the learning
        rate schedule does not advance (the extra critic passes)."""
        with self._actor_frozen(not with_actor):
            totals, finite = self._accumulate_gradients(minibatch, with_actor)
            norms = self._clip_gradients()
            bad_loss, bad_grad = self._global_sum(
                torch.tensor(float(not finite)),
                torch.tensor(float(not torch.isfinite(norms).all())),
            )
            if bad_loss > 0 or bad_grad > 0:  # every process skips together
                self.optimizer.zero_grad()
                return "loss" if bad_loss > 0 else "gradient norm"
            if not with_actor and self.accelerator.distributed_type != "DEEPSPEED":
                for p in self.accelerator.unwrap_model(self.model).actor.parameters():
                    p.grad = None  # AdamW skips it: no moment update, no weight decay
            self.optimizer.step()
        if schedule:
            self.scheduler.step()
        self.optimizer.zero_grad()
        return totals

    @contextmanager
    def _actor_frozen(self, frozen: bool) -> Iterator[None]:
        """The actor's learning rate (parameter group 0) is 0 inside the block when ``frozen``:
        under DeepSpeed the step runs inside the last backward and its gradients cannot be
        dropped, so a zero rate is what keeps the actor where it is."""
        if not frozen:
            yield
            return
        group = self.optimizer.param_groups[0]
        saved, group["lr"] = group["lr"], 0.0
        try:
            yield
        finally:
            group["lr"] = saved

    def train_on(self, exp: Experience) -> dict[str, float]:
        """``ppo_epochs`` × ``num_minibatches`` optimizer steps (critic only during
        ``critic_warmup_steps``), then ``critic_updates_per_step - 1`` more passes of critic-only
        steps (their value loss reported as ``loss/value_extra_avg``); mean stats over them."""
        cfg = self.cfg
        self.model.train()
        n = exp.mask.shape[0]
        size = n // cfg.num_minibatches
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + self.step)
        collected: dict[str, list[torch.Tensor]] = defaultdict(list)
        with_actor = self.step >= cfg.critic_warmup_steps
        for extra in range(cfg.critic_updates_per_step):
            for _ in range(cfg.ppo_epochs):
                order = torch.randperm(n, generator=gen).to(exp.mask.device)
                for start in range(0, n, size):
                    stats = self._optimizer_step(
                        exp.select(order[start : start + size]),
                        with_actor=with_actor and not extra,
                        schedule=not extra,
                    )
                    if isinstance(stats, str):  # skipped: what was not finite
                        collected["skipped"].append(torch.ones((), dtype=torch.float64))
                        self.non_finite.add(stats)
                        continue
                    if extra:
                        stats = {"loss/value_extra_avg": stats["loss/value_avg"]}
                    for k, v in stats.items():
                        collected[k].append(v)
        summed = {k: torch.stack(v).mean() for k, v in collected.items()}
        return {k: float(v) for k, v in zip(summed, self._global_sum(*summed.values()))}

    # ------------------------------------------------------------ the loop

    def _my_share(self, items: list) -> list:
        """This process's contiguous slice of a global list."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        per = len(items) // world
        return items[rank * per : (rank + 1) * per]

    def ppo_step(self) -> dict[str, float]:
        """Draw prompts, make experience, update; returns this step's (global) metrics."""
        times: dict[str, float] = {}
        if self.online_filter is not None:  # draws, generates, filters and refills groups
            exp, info = self.online_filter.experience(self, times)
        else:
            index = self._my_share(self.sampler.sample(self.cfg.rollout_batch_size))
            rows = [self.prompts[i] for i in index]
            exp, info = self.make_experience(rows, [self.prompt_ids[i] for i in index], times)
        kl = self.compute_advantages(exp)
        with self._timer(times, "train"):
            stats = self.train_on(exp)
        self._check_finite(stats)
        seq_kl = ca.masked_sum(kl, exp.mask, dim=1)
        metrics = self._rollout_metrics(exp, info, seq_kl)
        if metrics["objective/kl"] == metrics["objective/kl"]:  # NaN when every sample dropped
            self.kl_ctl.update(metrics["objective/kl"], self.cfg.rollout_batch_size)
        filtered = info.get("online_filter", {})
        return {**metrics, **self.estimator_metrics, **stats, **times, **filtered}

    def _check_finite(self, stats: dict) -> None:
        """Count PPO steps whose every optimizer step was skipped (a non-finite loss or gradient
        norm); ``max_bad_steps`` of them in a row raise ``FloatingPointError`` naming the step."""
        world = self.accelerator.num_processes
        if stats.get("skipped", 0) and len(stats) == 1:
            self.bad_steps += 1
            if self.bad_steps >= self.cfg.max_bad_steps:
                what = " and ".join(c for c in ("loss", "gradient norm") if c in self.non_finite)
                raise FloatingPointError(
                    f"non-finite {what} in {self.bad_steps} PPO steps in a row, the last at "
                    f"step {self.step + 1}; lower the learning rates or check the rewards"
                )
            stats["skipped"] /= world
        else:
            self.bad_steps = 0
            self.non_finite.clear()

    def _mean_over_samples(
        self, values: dict[str, torch.Tensor], kept: torch.Tensor | None = None
    ) -> dict[str, float]:
        """Global means of per-sample tensors ``{name: [N_local]}`` over the samples where
        ``kept`` ``[N_local]`` (bool) is True, all when None; NaN when none is kept anywhere."""
        names = list(values)
        if kept is None:
            kept = torch.ones(next(iter(values.values())).numel(), dtype=torch.bool)
        sums = self._global_sum(
            *(torch.where(kept, values[k], 0.0).sum() for k in names), kept.sum()
        )
        count = sums[-1]
        return {k: float(s / count) if count else float("nan") for k, s in zip(names, sums[:-1])}

    def _rollout_metrics(self, exp: Experience, info: dict, seq_kl: torch.Tensor) -> dict:
        non_score = -self.kl_ctl.value * seq_kl.cpu()
        scores = exp.scores.cpu()
        kept = ~info["dropped"]  # dropped samples have no score and no tokens: not averaged
        per_kept = {
            "objective/kl": seq_kl.cpu(),
            "objective/scores": scores,
            "objective/non_score_reward": non_score,
            "objective/rlhf_reward": scores + non_score,
            **{f"reward/{name}": s for name, s in info["parts"].items()},
        }
        per_sample = {
            "val/eos_rate": (~info["truncated"]).float(),
            "response_length": info["lengths"].float(),
            "reward/dropped": info["dropped"].float(),  # the share dropped
        }
        metrics = self._mean_over_samples(per_kept, kept)
        metrics.update(self._mean_over_samples(per_sample))
        metrics["reward/dropped_count"] = float(self._global_sum(info["dropped"].sum())[0])
        metrics.update(self._gap_metrics(*info["logprob_gap"]))
        metrics["objective/beta"] = self.kl_ctl.value
        metrics["lr/actor"] = self.scheduler.get_last_lr()[0]
        by_cat: dict[str, list[float]] = defaultdict(list)
        for c, s, ok in zip(info["categories"], scores.tolist(), kept.tolist()):
            if ok:
                by_cat[c].append(s)
        for c, s in by_cat.items():  # this process's samples; per-category means are indicative
            metrics[f"reward/category/{c}"] = sum(s) / len(s)
        return metrics

    def _gap_metrics(self, total: torch.Tensor, count: torch.Tensor, peak: torch.Tensor) -> dict:
        total, count = self._global_sum(total, count)
        if self.accelerator.num_processes > 1:
            peak = self.accelerator.gather(peak.reshape(1)).max()
        return {
            "rollout/logprob_gap_mean": float(total / count.clamp(min=1)),
            "rollout/logprob_gap_max": float(peak),
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Answers to the held-out prompts: mean combined score, overall and per category
        (none when there are no held-out prompts or ``eval_max_prompts`` is 0)."""
        if not self.eval_prompts or self.cfg.eval_max_prompts == 0:
            return {}
        rows = self.eval_prompts[: self.cfg.eval_max_prompts]
        world = self.accelerator.num_processes
        mine = rows[self.accelerator.process_index :: world]
        cfg = self.cfg
        sampling = SamplingParams(
            max_new_tokens=cfg.max_new_tokens, top_p=cfg.top_p, temperature=cfg.eval_temperature
        )
        with torch.random.fork_rng(devices=[]):  # the training stream stays untouched
            torch.manual_seed(cfg.seed + 1_000_003 + self.accelerator.process_index)
            batch = self._generate(
                [self._encode_prompt(r) for r in mine], sampling, 1, force_sync=True
            )
        texts = self.tokenizer.batch_decode(batch.completion_ids, skip_special_tokens=True)
        prompts, columns = reward_inputs(mine)
        with self._frozen_on_device(self.reward_models):
            scored = score_rewards(self.rewards, prompts, texts, columns,
                                   extras={"trainer_state": self._trainer_state()})  # fmt: skip
        results = list(
            zip(
                [r["category"] for r in mine],
                scored.total.tolist(),
                [f == "stop" for f in batch.finish_reasons],
                scored.kept.tolist(),
            )
        )
        if world > 1:
            results = gather_object(results)

        def kept_mean(picked: list[float]) -> float:  # dropped answers have no score
            return sum(picked) / len(picked) if picked else float("nan")

        out = {
            "eval/score": kept_mean([s for _, s, _, ok in results if ok]),
            "eval/eos_rate": sum(e for _, _, e, _ in results) / len(results),
            "eval/dropped": float(sum(not ok for *_, ok in results)),
        }
        for c in sorted({c for c, *_ in results}):
            out[f"eval/score/{c}"] = kept_mean([s for k, s, _, ok in results if k == c and ok])
        self.tracker.log_samples(  # this process's answers: the main process's are logged
            [
                {"prompt": p, "answer": t, "score": s}
                for p, t, s in zip(prompts, texts, scored.total.tolist())
            ],
            step=self.step,
        )
        return out

    def train(self, progress: Callable[[int, dict], None] = lambda step, m: None) -> dict:
        """Run to ``total_steps`` (from where a resumed run stopped); returns the last metrics."""
        cfg = self.cfg
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        if self.accelerator.is_main_process:
            config = {k: v for k, v in vars(cfg).items() if isinstance(v, int | float | str)}
            self.tracker = Tracker.start(cfg.report_to, self.out, cfg.project, cfg.run_name, config)
        metrics: dict = {}
        if self.step == 0:
            counts = {**self.param_counts, "prompts/truncated": self.truncated_prompts}
            self._log({"step": 0, **counts, **self.evaluate()})
        while self.step < cfg.total_steps:
            started = time.perf_counter()
            metrics = self.ppo_step()
            self.step += 1
            metrics = {"step": self.step, **metrics, "time/step": time.perf_counter() - started}
            last = self.step == cfg.total_steps
            if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                metrics.update(self.evaluate())
            self._log(metrics)
            if (cfg.save_every and self.step % cfg.save_every == 0) or last:
                self.save_checkpoint()
            progress(self.step, metrics)
        self.accelerator.end_training()
        self.tracker.finish()
        return metrics

    def _log(self, metrics: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        MetricsFile(self.out / METRICS_FILE).append(metrics)
        self.tracker.log(metrics, step=metrics["step"])

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """``checkpoints/step-N/``: ``actor/`` and ``critic/`` (when there is one) in HF format
        (safetensors), the
        accelerate state (models, optimizer, scheduler, RNG of every process) and
        ``trainer_state.pt``. Written to a temporary directory and renamed, so a crash never
        leaves half a checkpoint."""
        acc = self.accelerator
        final = self.out / "checkpoints" / f"step-{self.step}"
        with atomic_checkpoint(acc, final, self.cfg.save_total_limit) as tmp:
            state_dict = acc.get_state_dict(self.model)  # gathered under ZeRO-3: None off rank 0
            if acc.is_main_process:
                unwrapped = acc.unwrap_model(self.model)
                for name in ("actor", "critic"):
                    if getattr(unwrapped, name) is None:  # a critic-free estimator
                        continue
                    prefix = f"{name}."
                    part = {
                        k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)
                    }
                    getattr(unwrapped, name).save_pretrained(
                        tmp / name, state_dict=part, safe_serialization=True
                    )
                save_tokenizer(self.tokenizer, tmp / "actor", self.cfg.chat_format)
                torch.save(self._state(), tmp / "trainer_state.pt")
            acc.save_state(str(tmp / "accelerate"))
        return final

    def _state(self) -> dict:
        return {
            "step": self.step,
            "bad_steps": self.bad_steps,
            "critic_bad_steps": self.critic_bad_steps,
            "kl_ctl": self.kl_ctl.state_dict(),
            "score_stats": self.score_stats.state_dict(),
            "sampler": self.sampler.state_dict(),
            "online_filter": self.online_filter and self.online_filter.state_dict(),
        }

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything :meth:`save_checkpoint` wrote, so training continues exactly."""
        if not (path / "trainer_state.pt").is_file():
            raise FileNotFoundError(f"{path}: not a PPO checkpoint (no trainer_state.pt)")
        state = load_data_only(path / "trainer_state.pt")  # data only: nothing in it runs
        restore_accelerate_state(self.accelerator, path / "accelerate")
        self.step, self.bad_steps = state["step"], state["bad_steps"]
        self.critic_bad_steps = state.get("critic_bad_steps", 0)  # absent before issue 18
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.score_stats.load_state_dict(state["score_stats"])
        self.sampler.load_state_dict(state["sampler"])
        if self.online_filter is not None and state.get("online_filter") is not None:
            self.online_filter.load_state_dict(state["online_filter"])
        if self.accelerator.is_main_process:
            open_metrics(self.out / METRICS_FILE, self.step)  # drop a killed run's tail


def make_accelerator(cfg: PPOConfig):
    """The run's ``Accelerator`` (trackers of ``report_to``), several processes on a CPU-only
    machine included (:func:`align.core.distributed.make_accelerator`)."""
    return distributed.make_accelerator(project_dir=cfg.output_dir)  # trackers: align.core.tracking
