"""UFRM: two-stage reward-model training on TRL's ``RewardTrainer`` (docs/methods.md §2).

The model is ``AutoModelForSequenceClassification(num_labels=1)``: the LM body plus a linear
``score`` head on the last hidden layer, read at the last attended token. :class:`UFRMTrainer`
overrides ``compute_loss`` with ``L_BT + λ_IRL·L_IRL + λ_CL·L_CL`` (:mod:`rm.losses`) and
``create_optimizer`` only to add the SimCSE projection, which lives in the trainer, not in the
model, so the saved directory reloads cleanly with ``AutoModelForSequenceClassification``.

The two SimCSE views are two independent dropout masks (``cl_dropout``) on the head's input
``h_last`` of one backbone pass, projected by ``proj`` and L2-normalised. A Llama backbone has
no dropout, so a second backbone pass would return the same ``h_last``: the noise must be
injected, and injecting it after the backbone makes the second view cost almost nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from accelerate import PartialState
from datasets import Dataset, concatenate_datasets
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,
)
from transformers.trainer_callback import ProgressCallback
from trl import RewardConfig, RewardTrainer

from align.core.chat_formats import get_chat_format, save_tokenizer
from align.core.config import TRAINER_RANGES, check_ranges, config_to_yaml, load_config
from align.core.config import help_field as _help
from align.core.data import load_records, messages_of
from align.core.distributed import plain_ddp_without_cuda
from align.core.models import load_pretrained, model_init_options
from align.core.tensors import gather_last
from align.core.tracking import (
    default_run_name,
    finish_trainer_trackers,
    point_trainer_trackers,
    project_field,
)
from rm.losses import (
    bt_loss,
    info_nce_loss,
    irl_loss,
    token_bt_loss,
    ufrm_loss,
)
from rm.model import last_token_scores, require_safetensors, score_head

logger = logging.getLogger(__name__)

SCORE_STATS = "score_stats.json"


@dataclass
class UFRMConfig(RewardConfig):
    """Every knob of ``align rm train`` / ``recipes/ufrm.py``: TRL's ``RewardConfig`` plus the
    UFRM terms and the two stages. ``[S]`` marks values a XuanYuan report states. Every TRL /
    transformers field is accepted too (``--help`` lists them after the UFRM ones)."""

    config_trl_base: ClassVar[type] = RewardConfig  # --show_config prints its changed fields
    config_ranges: ClassVar[dict] = TRAINER_RANGES
    config_hidden: ClassVar[tuple[str, ...]] = ("resume_from_checkpoint",)
    config_removed: ClassVar[dict[str, str]] = dict.fromkeys(
        ("resume_from", "resume_from_checkpoint"),
        "not supported: UFRM stages save no checkpoints to resume from (train again into a "
        "fresh output_dir)",
    )

    output_dir: str = _help(
        "Run directory: stage1/, stage2/, config.yaml, summary.json, report.md.", "runs/ufrm"
    )
    project: str = project_field()  # transformers' default: huggingface
    model: str | None = _help(
        "Sequence-classification backbone (directory); none = the tiny world's reward model (and "
        "its preferences for the data left empty); once given, train_data is required.",
        None,
    )
    train_data: str | None = _help(
        "Stage-1 (general) preference records; required with a model; none without one = the "
        "tiny world's prefs (and its held-out pairs as eval_data).",
        None,
    )
    eval_data: list[str] = _help(
        "Held-out preference files evaluated after each stage (alignment rates).", factory=list
    )
    stage2_data: str | None = _help(
        "Stage-2 (financial) preference records; none = one stage only [S: two stages].", None
    )
    default_category: str | None = _help(
        "Category of preference records that carry none (none: every record must carry one).",
        None,
    )
    stage2_learning_rate: float | None = _help(
        "Stage-2 learning rate; none = 0.5 × learning_rate.", None, ge=0
    )
    stage2_epochs: float | None = _help("Stage-2 epochs; none = num_train_epochs.", None, gt=0)
    replay_share: float = _help(
        "Share of the stage-2 training set drawn from stage-1 data (0 = none; 0.1-0.2 suggested).",
        0.0,
        ge=0,
        lt=1,
    )
    chat_format: str = _help("Chat format the conversations are rendered with.", "hf")
    irl_weight: float = _help("λ_IRL, weight of the inverse-RL discriminator term.", 0.5, ge=0)
    cl_weight: float = _help("λ_CL, weight of the SimCSE contrastive term.", 0.1, ge=0)
    cl_temperature: float = _help("InfoNCE temperature τ [SimCSE: 0.05].", 0.05, gt=0)
    cl_dropout: float = _help(
        "Dropout injected on h_last for the two SimCSE views.", 0.1, ge=0, lt=1
    )
    cl_proj_dim: int = _help("Width of the SimCSE projection (0 = the hidden size).", 0, ge=0)
    token_level: bool = _help(
        "Token-level BT from the first differing token instead of last-token BT [S option].", False
    )
    use_margin: bool = _help("Subtract a record's `margin` inside the BT term when present.", True)
    eval_batch_size: int = _help("Pairs per forward when scoring (stats, evaluation).", 16, ge=1)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.resume_from_checkpoint is not None:
            raise ValueError(f"resume_from_checkpoint: {self.config_removed['resume_from']}")
        if self.bf16 is None and not torch.cuda.is_available():
            self.bf16 = False  # TRL resolves an unset bf16 to True, which a CPU cannot train in
        if plain_ddp_without_cuda() and not self.use_cpu and not self.deepspeed:
            # without it every launched process sets itself up as rank 0 of 1 and trains alone;
            # use_cpu makes the processes one gloo group (DDP), as align ppo does
            logger.info("several processes and no CUDA: use_cpu=True (gloo process group)")
            self.use_cpu = True
        if self.cl_weight and not self.cl_dropout:
            raise ValueError(
                "cl_dropout: expected > 0 when cl_weight > 0 (the views would coincide)"
            )
        super().__post_init__()

    @classmethod
    def from_sources(
        cls, config: str | Path | None = None, overrides: list[str] = ()
    ) -> UFRMConfig:
        """YAML file (optional) then ``--field value`` overrides; unknown fields are errors."""
        return load_config(cls, config, overrides)

    def to_yaml(self) -> str:
        """The UFRM fields and the TRL fields that differ from their defaults."""
        return config_to_yaml(self)


# --------------------------------------------------------------------------- data


@dataclass
class EncodeStats:
    """What :func:`encode_pairs` did to its input: nothing is dropped without a count."""

    pairs: int = 0
    kept: int = 0
    identical: int = 0
    truncated: int = 0

    def as_dict(self) -> dict:
        return dict(vars(self))


def _encode(
    tokenizer, chat, messages: list[dict], answer: str, max_length: int
) -> tuple[list, bool]:
    text = chat.render([*messages, {"role": "assistant", "content": answer}], tokenizer=tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_length:], len(ids) > max_length


def encode_pairs(
    records, tokenizer, chat_format: str, max_length: int, use_margin: bool = True
) -> tuple[Dataset, EncodeStats]:
    """``prefs`` records → ``{chosen_ids, rejected_ids, category[, margin]}``.

    Conversations are left-truncated to ``max_length`` tokens (the answer's end, where the score
    is read, is kept) and counted; pairs whose chosen and rejected token ids are identical carry
    no preference and are dropped, counted, with a warning.
    """
    chat = get_chat_format(chat_format)
    stats, rows = EncodeStats(), []
    with_margin = use_margin and any(r.get("margin") is not None for r in records)
    for record in records:
        stats.pairs += 1
        messages = messages_of(record)
        c, c_cut = _encode(tokenizer, chat, messages, record["chosen"], max_length)
        r, r_cut = _encode(tokenizer, chat, messages, record["rejected"], max_length)
        stats.truncated += c_cut or r_cut
        if c == r:
            stats.identical += 1
            continue
        row = {"chosen_ids": c, "rejected_ids": r, "category": record["category"]}
        if with_margin:
            row["margin"] = float(record.get("margin") or 0.0)
        rows.append(row)
    stats.kept = len(rows)
    if stats.identical:
        logger.warning("dropped %d pairs whose chosen and rejected are identical", stats.identical)
    if stats.truncated:
        logger.warning("left-truncated %d pairs to %d tokens", stats.truncated, max_length)
    if not rows:
        raise ValueError("no usable preference pairs (all identical or none given)")
    return Dataset.from_list(rows), stats


# --------------------------------------------------------------------------- trainer


class UFRMTrainer(RewardTrainer):
    """``RewardTrainer`` with the UFRM loss. Extra per-term metrics are logged like TRL's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        hidden = self.model.config.get_text_config().hidden_size
        gen = torch.Generator().manual_seed(self.args.seed)
        proj = torch.nn.Linear(hidden, self.args.cl_proj_dim or hidden)
        with torch.no_grad():
            bound = 1 / math.sqrt(hidden)
            proj.weight.uniform_(-bound, bound, generator=gen)
            proj.bias.zero_()
        self.cl_proj = proj.to(self.args.device)
        self._warned_single = False

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.args.cl_weight and not any(
            p is self.cl_proj.weight for g in optimizer.param_groups for p in g["params"]
        ):
            optimizer.add_param_group(
                {"params": list(self.cl_proj.parameters()), "weight_decay": 0.0}
            )
        return optimizer

    def cl_views(self, h_last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views ``[B, D]`` of ``[B, H]``: independent dropout masks, then the projection.
        In eval mode (no dropout) they coincide."""
        p, train = self.args.cl_dropout, self.model.training
        view_a = torch.nn.functional.dropout(h_last, p, training=train)
        view_b = torch.nn.functional.dropout(h_last, p, training=train)
        return self.cl_proj(view_a.float()), self.cl_proj(view_b.float())

    def _cl_term(self, h_last: torch.Tensor, n_pairs: int) -> torch.Tensor | None:
        if not self.args.cl_weight:
            return None
        if n_pairs < 2:
            if not self._warned_single:
                logger.warning("a batch of one pair: the contrastive term is disabled for it")
                self._warned_single = True
            return None
        view_a, view_b = self.cl_views(h_last)
        return info_nce_loss(view_a, view_b, self.args.cl_temperature)

    def _bt_term(self, scores, inputs, margin, n) -> torch.Tensor:
        rewards = gather_last(scores, inputs["attention_mask"])
        if not self.args.token_level:
            return bt_loss(rewards[:n], rewards[n:], margin)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        return token_bt_loss(scores[:n], scores[n:], ids[:n], ids[n:], mask[:n], mask[n:])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        margin = inputs.pop("margin", None)
        margin = margin if self.args.use_margin else None
        outputs = model(**inputs, use_cache=False, output_hidden_states=True)
        hidden, mask = outputs.hidden_states[-1], inputs["attention_mask"]
        # per-token scores [2N, T] from the head's input (the model pools by pad id; we by mask)
        scores = _score_head(self.accelerator.unwrap_model(model))(hidden)[..., 0].float()
        n = scores.shape[0] // 2
        rewards = gather_last(scores, mask)
        terms = {"bt": self._bt_term(scores, inputs, margin, n)}
        if self.args.irl_weight:
            terms["irl"] = irl_loss(rewards[:n], rewards[n:])
        cl = self._cl_term(gather_last(hidden, mask), n)
        if cl is not None:
            terms["cl"] = cl
        loss = ufrm_loss(
            terms["bt"],
            terms.get("irl"),
            terms.get("cl"),
            self.args.irl_weight,
            self.args.cl_weight,
        )
        self._log_terms(mode, terms, rewards.detach(), n)
        outputs.logits = rewards[:, None]
        return (loss, outputs) if return_outputs else loss

    def _log_terms(self, mode: str, terms: dict, rewards: torch.Tensor, n: int) -> None:
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        for name, value in terms.items():
            metrics[f"loss_{name}"].append(gather(value.detach()).mean().item())
        chosen, rejected = gather(rewards[:n]), gather(rewards[n:])
        both = torch.cat([chosen, rejected])
        metrics["accuracy"].append((chosen > rejected).float().mean().item())
        metrics["margin"].append((chosen - rejected).mean().item())
        metrics["reward_mean"].append(both.mean().item())
        metrics["reward_std"].append(both.std(unbiased=False).item())
        metrics["chosen_reward"].append(chosen.mean().item())
        metrics["rejected_reward"].append(rejected.mean().item())


def _score_head(model: torch.nn.Module) -> torch.nn.Module:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return score_head(inner)


# --------------------------------------------------------------------------- scoring, saving


@torch.no_grad()
def score_encoded(model, dataset: Dataset, pad_id: int, batch_size: int = 16) -> tuple[list, list]:
    """Chosen and rejected scores of an encoded pair dataset, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        for key, out in (("chosen_ids", chosen), ("rejected_ids", rejected)):
            seqs = batch[key]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):
                ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
            out += last_token_scores(model, ids.to(device), mask.to(device)).tolist()
    model.train(was_training)
    return chosen, rejected


def score_stats(scores: list[float]) -> dict:
    """``{"mean", "std", "count"}`` (population std) of reward scores."""
    t = torch.tensor(scores, dtype=torch.float64)
    return {"mean": t.mean().item(), "std": t.std(unbiased=False).item(), "count": len(scores)}


def save_reward_model(model, tokenizer, out: Path, stats: dict, chat_format: str = "hf") -> None:
    """HF ``save_pretrained`` (safetensors) + tokenizer (carrying ``chat_format``) +
    ``score_stats.json``."""
    out = Path(out)
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out, chat_format)
    (out / SCORE_STATS).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- stages


def load_reward_model(path: str | Path, **options):
    """``AutoModelForSequenceClassification(num_labels=1)`` + tokenizer from a directory.

    Weights load from safetensors only: a directory holding just ``pytorch_model.bin`` is refused
    (:func:`rm.model.require_safetensors`), since unpickling can run arbitrary code. ``options``:
    ``dtype``, ``attn_implementation`` (:func:`align.core.models.model_init_options`). Under
    DeepSpeed ZeRO-3 (a TrainingArguments made in a DeepSpeed launch) it loads partitioned.
    """
    require_safetensors(path)
    model = load_pretrained(
        AutoModelForSequenceClassification, path, "model", num_labels=1, **options
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _mix_replay(stage2: Dataset, stage1: Dataset, share: float, seed: int) -> Dataset:
    """Stage-2 set with ``share`` of its final size drawn (without replacement) from stage 1."""
    if not share:
        return stage2
    n_replay = min(len(stage1), round(share * len(stage2) / (1 - share)))
    idx = random.Random(seed).sample(range(len(stage1)), n_replay)
    columns = [c for c in stage2.column_names if c in stage1.column_names]
    return concatenate_datasets(
        [stage2.select_columns(columns), stage1.select(idx).select_columns(columns)]
    )


def _stage_args(config: UFRMConfig, stage: int, out: Path) -> UFRMConfig:
    changes = {"output_dir": str(out), "save_strategy": "no", "disable_dropout": True}
    changes["run_name"] = f"{default_run_name(config.run_name, config.output_dir)}/stage{stage}"
    if stage == 2:
        changes["learning_rate"] = config.stage2_learning_rate or 0.5 * config.learning_rate
        changes["num_train_epochs"] = config.stage2_epochs or config.num_train_epochs
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    values.update(changes)
    return type(config)(**values)


def train_stage(
    config: UFRMConfig,
    model,
    tokenizer,
    train: Dataset,
    stage: int,
    out: Path,
    progress: TrainerCallback | None = None,
) -> dict:
    """Train one stage, save its model directory with score stats, return its log.

    Under several processes every rank trains; the main process alone scores the training set
    and saves, and the others wait until the directory is complete. ``progress`` replaces the
    Trainer's own tqdm bar.
    """
    args = _stage_args(config, stage, out)
    point_trainer_trackers(args, config.output_dir)  # <stage>/tensorboard, <out>/wandb, names
    trainer = UFRMTrainer(
        model=model,
        args=args,
        train_dataset=train.remove_columns("category"),
        processing_class=tokenizer,
    )
    if progress is not None:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(progress)
    result = trainer.train()
    finish_trainer_trackers(args)  # one wandb run per stage
    stats = None
    if trainer.accelerator.is_main_process:
        chosen, rejected = score_encoded(
            trainer.model, train, tokenizer.pad_token_id, config.eval_batch_size
        )
        stats = score_stats(chosen + rejected)
        save_reward_model(trainer.model, tokenizer, out, stats, config.chat_format)
    trainer.accelerator.wait_for_everyone()
    return {
        "stage": stage,
        "train_loss": result.training_loss,
        "score_stats": stats,
        "log_history": trainer.state.log_history,
    }


def _evaluate_on_main(evaluate_fn, model_dir: Path) -> dict | None:
    """``evaluate_fn(model_dir)`` on the main process only; every process waits for it."""
    state = PartialState()
    result = evaluate_fn(model_dir) if state.is_main_process else None
    state.wait_for_everyone()
    return result


def run_ufrm(config: UFRMConfig, evaluate_fn=None, progress: TrainerCallback | None = None) -> dict:
    """Stage 1 on ``train_data`` into ``output_dir/stage1``; stage 2 (if ``stage2_data``),
    initialised from stage 1 (head included), into ``output_dir/stage2``. ``evaluate_fn(dir)``
    (optional) runs after each stage on the main process; its results go into the returned
    summary. ``progress`` (a ``TrainerCallback``) is given to both stages' trainers."""
    out = Path(config.output_dir)
    options = model_init_options(config.model_init_kwargs)
    model, tokenizer = load_reward_model(config.model, **options)
    summary = {"stages": []}
    stage1, enc1 = _load_encoded(config, config.train_data, tokenizer)
    log = train_stage(config, model, tokenizer, stage1, 1, out / "stage1", progress)
    log["data"] = enc1.as_dict()
    summary["stages"].append(log)
    if evaluate_fn is not None:
        log["eval"] = _evaluate_on_main(evaluate_fn, out / "stage1")
    if config.stage2_data:
        model, tokenizer = load_reward_model(out / "stage1", **options)
        stage2, enc2 = _load_encoded(config, config.stage2_data, tokenizer)
        mixed = _mix_replay(stage2, stage1, config.replay_share, config.seed)
        log = train_stage(config, model, tokenizer, mixed, 2, out / "stage2", progress)
        log["data"] = {**enc2.as_dict(), "replay": len(mixed) - len(stage2)}
        summary["stages"].append(log)
        if evaluate_fn is not None:
            log["eval"] = _evaluate_on_main(evaluate_fn, out / "stage2")
    summary["final"] = str(out / f"stage{len(summary['stages'])}")
    return summary


def _load_encoded(config: UFRMConfig, path, tokenizer) -> tuple[Dataset, EncodeStats]:
    if path is None:
        raise ValueError("train_data: expected a preference file")
    records = list(load_records(path, "prefs", config.default_category))
    return encode_pairs(
        records, tokenizer, config.chat_format, config.max_length, config.use_margin
    )
