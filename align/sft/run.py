"""``recipes/sft.py``: answer-only SFT on TRL's ``SFTTrainer`` with per-category loss and the
dynamic data mix (docs/methods.md §6).

- Labels: :mod:`align.sft.data` (assistant replies and their terminators; −100 elsewhere).
- Per-category loss: a forward hook reads the per-token log-probs that TRL's fused LM head
  returns, so TRL's own loss path is untouched; sums are reduced across processes when logged
  (``loss/<category>`` while training, ``eval_loss/<category>`` on the held-out set).
- Mix: each epoch draws ``epoch_size`` rows by category weights (:class:`MixtureEpochSampler`);
  the initial weights follow ``general_finance_ratio`` (XuanYuan-70B: 4 : 1 [S]) or the data;
  after each epoch's held-out evaluation the controller (:mod:`align.core.mixture_control`)
  moves them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from align.core.chat_formats import get_chat_format
from align.core.config import (
    TRAINER_RANGES,
    check_ranges,
    config_to_yaml,
    load_config,
    missing_inputs_error,
)
from align.core.config import help_field as _help
from align.core.data import load_records, messages_of, split_held_out
from align.core.io import MetricsFile, atomic_write_json, open_metrics
from align.core.mixture import initial_mix
from align.core.mixture_control import MixtureControlConfig, MixtureController
from align.core.models import load_pretrained, model_init_options
from align.core.tracking import finish_trainer_trackers, point_trainer_trackers, project_field
from align.sft.data import (
    MixtureEpochSampler,
    category_counts,
    category_loss_sums,
    encode_sft_records,
)
from align.tiny.build import build_tiny_world

logger = logging.getLogger(__name__)


@dataclass
class SFTRecipeConfig(SFTConfig):
    """Every knob of ``align sft`` / ``recipes/sft.py``: TRL's ``SFTConfig`` plus data, mix and
    controller. Every TRL / transformers field is accepted too (``--help`` lists them after ours).

    The recipe evaluates after every epoch (the mixture moves then) and keeps the
    ``category_id`` column for its collator: ``eval_strategy`` is ``epoch`` and
    ``remove_unused_columns`` false (other values are errors).
    """

    config_trl_base: ClassVar[type] = SFTConfig  # --show_config prints its changed fields
    config_ranges: ClassVar[dict] = TRAINER_RANGES
    config_renames: ClassVar[dict[str, str]] = {
        "resume_from_checkpoint": "resume_from",
        "mix_eta": "mix.eta",
        "mix_min_factor": "mix.min_factor",
        "mix_max_factor": "mix.max_factor",
        "mix_overfit_tolerance": "mix.overfit_tolerance",
    }

    output_dir: str = _help(
        "Run directory: checkpoints, final/, metrics.jsonl, summary.json, report.md.", "runs/sft"
    )
    project: str = project_field()  # transformers' default: huggingface
    eval_strategy: str = _help(
        "epoch: the mix moves after each epoch's held-out evaluation (the only value).", "epoch"
    )
    remove_unused_columns: bool = _help(
        "false: the collator needs the category_id column (the only value).", False
    )
    model: str | None = _help(
        "Causal LM directory; none = the tiny world's policy (and the tiny world fills in the "
        "data left empty); once given, train_data is required."
    )
    train_data: list[str] = _help(
        "SFT record files; required with a model; empty without one = the tiny world's "
        "preference pairs' chosen answers.",
        factory=list,
    )
    eval_data: str | None = _help(
        "Held-out SFT records; none = the tiny world's held-out prompts with their references "
        "(tiny world) or an `eval_share` split of train_data.",
    )
    eval_share: float = _help(
        "Held-out share split off train_data when eval_data is none.", 0.05, gt=0, lt=1
    )
    default_category: str | None = _help(
        "Category of SFT records that carry none (none: every record must carry one).", None
    )
    chat_format: str = _help("Chat format conversations are rendered with.", "hf")
    general_categories: list[str] = _help(
        "Categories counted as general data for general_finance_ratio.", factory=list
    )
    general_finance_ratio: float | None = _help(
        "general : finance share of the initial mix (4 = XuanYuan-70B's 4:1 [S]); none = as in "
        "the data.",
        gt=0,
    )
    category_weights: dict[str, float] | None = _help(
        "Explicit initial weights per category (overrides general_finance_ratio)."
    )
    epoch_size: int | None = _help("Rows drawn per epoch; none = the training rows.", ge=1)
    dynamic_mix: bool = _help("Move the weights after each epoch by held-out loss [S].", True)
    mix: MixtureControlConfig = _help(
        "The mixture controller [P] (docs/methods.md §6).", factory=MixtureControlConfig
    )
    resume_from: str | None = _help(
        "Checkpoint to continue from: 'latest' (the last checkpoint-N of output_dir) or a "
        "checkpoint directory; none = start afresh."
    )

    def __post_init__(self) -> None:
        if self.bf16 is None and not torch.cuda.is_available():
            self.bf16 = False  # TRL resolves an unset bf16 to True, which a CPU cannot train in
        check_ranges(self)
        if self.max_length is None:
            raise ValueError("max_length: expected a number of tokens, got none")
        if str(getattr(self.eval_strategy, "value", self.eval_strategy)) != "epoch":
            raise ValueError(
                f"eval_strategy: expected 'epoch' (the mix moves after each epoch's held-out "
                f"evaluation), got {self.eval_strategy!r}"
            )
        if self.remove_unused_columns:
            raise ValueError(
                "remove_unused_columns: expected false (the collator reads category_id)"
            )
        if self.resume_from_checkpoint is not None:
            raise ValueError("resume_from_checkpoint: spelled resume_from here (latest or a dir)")
        super().__post_init__()

    def controller_config(self) -> MixtureControlConfig:
        return self.mix

    def to_dict(self) -> dict:
        """TrainingArguments' plain dict (what tensorboard / wandb log as the run's arguments),
        the nested ``mix`` settings as a mapping: JSON has no dataclasses."""
        return {**super().to_dict(), "mix": asdict(self.mix)}

    @classmethod
    def from_sources(cls, config=None, overrides: list[str] = ()) -> SFTRecipeConfig:
        """YAML file (optional) then ``--field value`` overrides; unknown fields are errors."""
        return load_config(cls, config, overrides)

    def to_yaml(self) -> str:
        """Our fields and the TRL fields that differ from their defaults."""
        return config_to_yaml(self)


# --------------------------------------------------------------------------- trainer


@dataclass
class CategoryDataCollator(DataCollatorForLanguageModeling):
    """TRL's collator (labels padded with −100) plus ``category_ids`` [B]."""

    def torch_call(self, examples: list[dict]) -> dict:
        out = super().torch_call(examples)
        out["category_ids"] = torch.tensor([e["category_id"] for e in examples])
        return out


class MixtureSFTTrainer(SFTTrainer):
    """``SFTTrainer`` that logs per-category loss and samples epochs by category weights."""

    def __init__(self, *args, categories: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.categories = categories
        self.mixture_sampler: MixtureEpochSampler | None = None  # set before train()
        n = len(categories)
        self._sums = {m: torch.zeros(2, n, dtype=torch.float64) for m in ("train", "eval")}
        self._pending: torch.Tensor | None = None
        self.model.register_forward_hook(self._capture)

    def _get_train_sampler(self, train_dataset=None):
        return self.mixture_sampler

    def _capture(self, module, args, output) -> None:
        """Forward hook: add the batch's per-category NLL sums (TRL's fused-head outputs)."""
        if self._pending is None or getattr(output, "label_mask", None) is None:
            return
        sums, counts = category_loss_sums(
            output.log_probs.detach().double(),
            output.label_mask,
            self._pending,
            len(self.categories),
        )
        mode = "train" if module.training else "eval"
        self._sums[mode] += torch.stack([sums, counts]).cpu()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._pending = inputs.pop("category_ids")
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._pending = None

    def category_losses(self, mode: str) -> tuple[dict[str, float], float | None]:
        """Token-mean loss per category, and over all categories, since the last call (summed
        over processes)."""
        totals = self.accelerator.reduce(self._sums[mode].to(self.args.device), "sum").cpu()
        self._sums[mode].zero_()
        per = {
            c: (totals[0, k] / totals[1, k]).item()
            for k, c in enumerate(self.categories)
            if totals[1, k] > 0
        }
        overall = (totals[0].sum() / totals[1].sum()).item() if totals[1].sum() > 0 else None
        return per, overall

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "eval_loss" if mode == "eval" else "loss"
        per, overall = self.category_losses(mode)
        logs.update({f"{prefix}/{c}": v for c, v in per.items()})
        if mode == "eval" and overall is not None:
            logs["eval_loss_tokens"] = overall
        super().log(logs, start_time)


MIXTURE_STATE = "mixture_controller.json"


class MixtureCallback(TrainerCallback):
    """After every held-out evaluation: the first sets the controller's reference losses, the
    others move the weights the next epoch is drawn with. Each checkpoint gets the controller's
    state (``mixture_controller.json``) so a resumed run draws the same epochs."""

    def __init__(self, controller: MixtureController, sampler: MixtureEpochSampler, categories):
        self.controller, self.sampler, self.categories = controller, sampler, categories
        self.enabled = True
        self.last: tuple[int, dict] | None = None  # (step, metrics) of the latest evaluation
        self.first: dict | None = None  # metrics of the evaluation before training

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / MIXTURE_STATE
            payload = {"controller": self.controller.state_dict(), "first": self.first}
            atomic_write_json(path, payload)

    def load(self, checkpoint: str | Path) -> None:
        """Restore the controller, the sampler's weights and the baseline from a checkpoint."""
        path = Path(checkpoint) / MIXTURE_STATE
        if not path.is_file():
            raise FileNotFoundError(
                f"{checkpoint}: no {MIXTURE_STATE} (not an SFT recipe checkpoint)"
            )
        state = json.loads(path.read_text(encoding="utf-8"))
        self.controller.load_state_dict(state["controller"])
        self.first = state["first"]
        self.sampler.set_weights([self.controller.weights[c] for c in self.categories])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.last = (state.global_step, dict(metrics))
        if self.first is None:
            self.first = dict(metrics)
        losses = {c: metrics[f"eval_loss/{c}"] for c in self.categories}
        if self.controller.start is None:
            self.controller.observe_start(losses)
        elif self.enabled:
            weights = self.controller.update(losses)
            self.sampler.set_weights([weights[c] for c in self.categories])
            metrics.update({f"mix/{c}": w for c, w in weights.items()})


class JsonlLogger(TrainerCallback):
    """Every log record as one line of ``metrics.jsonl`` (main process), and the new mixture
    weights after each evaluation (registered after :class:`MixtureCallback`)."""

    def __init__(self, path: Path):
        self.metrics = MetricsFile(path)

    def _write(self, state, record: dict) -> None:
        if state.is_world_process_zero and record:
            self.metrics.append({"step": state.global_step, **record})

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._write(state, logs)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._write(state, {k: v for k, v in (metrics or {}).items() if k.startswith("mix/")})


# --------------------------------------------------------------------------- data


def check_inputs(cfg: SFTRecipeConfig) -> None:
    """With a ``model`` given, nothing comes from the tiny world: ``train_data`` is required
    (one line naming it otherwise)."""
    if cfg.model and not cfg.train_data:
        raise missing_inputs_error(
            ("model", cfg.model),
            [("train_data", "SFT record files {messages | prompt + completion, category}")],
        )


def _tiny_defaults(cfg: SFTRecipeConfig) -> tuple[str, list[dict] | None, list[dict] | None]:
    """Model, training records and held-out records, the tiny world filling what is unset when
    no ``model`` is given; with a ``model``, ``train_data`` is required (one line otherwise).

    Tiny training data: the chosen answers of its preference pairs, clean demonstrations the
    policy has not seen (its own ``sft.jsonl`` is noisy by design and already trained on).
    Tiny held-out data: its held-out prompts with their reference answers.
    """
    check_inputs(cfg)
    if cfg.model:
        return cfg.model, None, None
    world, _ = build_tiny_world()

    def conversation(r: dict, answer: str) -> dict:
        messages = [*messages_of(r), {"role": "assistant", "content": answer}]
        return {"messages": messages, "category": r["category"]}

    train = held = None
    if not cfg.train_data:
        train = [conversation(r, r["chosen"]) for r in load_records(world.data("prefs"), "prefs")]
        if cfg.eval_data is None:
            prompts = load_records(world.data("eval_prompts"), "prompts")
            held = [conversation(r, r["reference"]) for r in prompts]
    return cfg.model or str(world.policy), train, held


def load_sft_data(cfg: SFTRecipeConfig, tokenizer) -> dict:
    """Encoded train and held-out sets, the categories and the encoding stats."""
    model, train, held = _tiny_defaults(cfg)
    if train is None:
        train = [
            dict(r)
            for path in cfg.train_data
            for r in load_records(path, "sft", cfg.default_category)
        ]
    if held is None and cfg.eval_data:
        held = [dict(r) for r in load_records(cfg.eval_data, "sft", cfg.default_category)]
    if held is None:
        train, held = split_held_out(train, cfg.eval_share, cfg.seed)
    categories = sorted({r["category"] for r in train})
    train_ds, train_stats = encode_sft_records(
        train, tokenizer, cfg.chat_format, cfg.max_length, categories
    )
    held = [r for r in held if r["category"] in set(categories)]
    eval_ds, eval_stats = encode_sft_records(
        held, tokenizer, cfg.chat_format, cfg.max_length, categories
    )
    return {
        "model": model,
        "train": train_ds,
        "eval": eval_ds,
        "categories": categories,
        "stats": {"train": train_stats.as_dict(), "eval": eval_stats.as_dict()},
    }


# --------------------------------------------------------------------------- run


def build_trainer(cfg: SFTRecipeConfig) -> tuple[MixtureSFTTrainer, dict]:
    model_dir, _, _ = _tiny_defaults(cfg)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # the Trainer saves this tokenizer into every checkpoint and final/: it carries the format
    get_chat_format(cfg.chat_format).apply_to(tokenizer)
    data = load_sft_data(cfg, tokenizer)
    categories = data["categories"]
    weights = initial_mix(
        category_counts(data["train"]["category_id"], categories),
        cfg.general_categories,
        cfg.general_finance_ratio,
        cfg.category_weights,
    )
    controller = MixtureController(weights, cfg.controller_config())
    mix = MixtureCallback(controller, None, categories)
    mix.enabled = cfg.dynamic_mix
    # cfg (TrainingArguments) exists: under DeepSpeed ZeRO-3 the model loads partitioned
    options = model_init_options(cfg.model_init_kwargs)
    model = load_pretrained(AutoModelForCausalLM, model_dir, "model", **options)
    trainer = MixtureSFTTrainer(
        model=model,
        args=cfg,
        train_dataset=data["train"],
        eval_dataset=data["eval"],
        processing_class=tokenizer,
        data_collator=CategoryDataCollator(pad_token_id=tokenizer.pad_token_id),
        callbacks=[mix, JsonlLogger(Path(cfg.output_dir) / "metrics.jsonl")],
        categories=categories,
    )
    # rows as TRL prepared them (same order; nothing left to filter after encode_sft_records)
    rows = trainer.train_dataset["category_id"]
    trainer.mixture_sampler = mix.sampler = MixtureEpochSampler(
        rows, [weights[c] for c in categories], cfg.epoch_size or len(rows), cfg.seed
    )
    return trainer, {"data": data, "mix": mix, "initial_weights": weights}


def resume_checkpoint(cfg: SFTRecipeConfig) -> str | None:
    """The checkpoint ``cfg.resume_from`` names (``latest``: the last ``checkpoint-N`` of
    ``output_dir``), or None for a fresh run; a missing one is an error naming the field."""
    if not cfg.resume_from:
        return None
    if cfg.resume_from == "latest":
        last = get_last_checkpoint(cfg.output_dir) if Path(cfg.output_dir).is_dir() else None
        if last is None:
            raise FileNotFoundError(
                f"resume_from: latest, but {cfg.output_dir} holds no checkpoint-N directory"
            )
        return last
    if not Path(cfg.resume_from).is_dir():
        raise FileNotFoundError(f"resume_from: {cfg.resume_from}: no such checkpoint directory")
    return cfg.resume_from


def _checkpoint_step(checkpoint: str) -> int:
    """The global step a Trainer checkpoint directory was saved at."""
    state = Path(checkpoint) / "trainer_state.json"
    return int(json.loads(state.read_text(encoding="utf-8"))["global_step"])


def run(cfg: SFTRecipeConfig) -> dict:
    """Evaluate, train, evaluate; save the model to ``output_dir/final`` and a summary."""
    check_inputs(cfg)  # before anything is written
    point_trainer_trackers(cfg)  # checked before the model loads; run name, project, tb dir
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer, parts = build_trainer(cfg)
    resume = resume_checkpoint(cfg)
    if trainer.accelerator.is_main_process:
        # fresh: refuse an earlier run's metrics; resumed: keep the lines up to the checkpoint
        open_metrics(out / "metrics.jsonl", _checkpoint_step(resume) if resume else None)
        (out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    trainer.accelerator.wait_for_everyone()
    if resume:
        parts["mix"].load(resume)
    else:
        trainer.evaluate()  # the baseline: the controller's reference losses
    before = parts["mix"].first
    result = trainer.train(resume_from_checkpoint=resume)
    step, after = parts["mix"].last
    if step != trainer.state.global_step:  # the last epoch's evaluation is the final one
        after = trainer.evaluate()
    finish_trainer_trackers(cfg)
    trainer.save_model(str(out / "final"))
    summary = {
        "categories": parts["data"]["categories"],
        "data": parts["data"]["stats"],
        "initial_weights": parts["initial_weights"],
        "mixture": parts["mix"].controller.state_dict(),
        "train_loss": result.training_loss,
        "held_out_before": _eval_view(before, parts["data"]["categories"]),
        "held_out_after": _eval_view(after, parts["data"]["categories"]),
        "final": str(out / "final"),
    }
    if trainer.accelerator.is_main_process:
        atomic_write_json(out / "summary.json", summary)
        (out / "report.md").write_text(report_markdown(summary), encoding="utf-8")
    return summary


def _eval_view(metrics: dict, categories: list[str]) -> dict:
    return {
        "loss": metrics["eval_loss_tokens"],
        "per_category": {c: metrics[f"eval_loss/{c}"] for c in categories},
    }


def report_markdown(summary: dict) -> str:
    """Held-out loss per category before / after and the final mixture weights."""
    before, after = summary["held_out_before"], summary["held_out_after"]
    weights = summary["mixture"]["weights"]
    lines = [
        "# SFT run",
        "",
        "| category | held-out loss before | after | initial weight | final weight |",
        "|---|---|---|---|---|",
    ]
    for c in summary["categories"]:
        lines.append(
            f"| {c} | {before['per_category'][c]:.4f} | {after['per_category'][c]:.4f} "
            f"| {summary['initial_weights'][c]:.3f} | {weights[c]:.3f} |"
        )
    lines.append(f"| **all** | {before['loss']:.4f} | {after['loss']:.4f} | 1 | 1 |")
    return "\n".join(lines) + "\n"
