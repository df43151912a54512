"""``recipes/pretrain.py``: continued pretraining on bucketed documents with per-category loss
and the dynamic mixture per stage (docs/methods.md §5, §6).

A run is ``num_stages`` stages. Each stage draws ``stage_documents`` training documents by the
current category weights (:func:`align.core.mixture.epoch_composition`), composes them into bucket
instances (:func:`align.pretrain.bucketing.bucket_documents`), and trains one pass over them with
:class:`align.pretrain.bucket_sampler.BucketBatchSampler` (constant tokens per step, one bucket
per step on
every rank). Cross-document attention inside an instance is allowed (XuanYuan3's choice). After
each stage, the held-out loss per category moves the weights (:mod:`align.core.mixture_control`).

Checkpoints ``checkpoints/step-N/`` (every ``save_every`` steps and at the end of every stage) hold
everything the rest of the run depends on: ``model/`` (HF safetensors + tokenizer), ``accelerate/``
(model, optimizer, RNG states of every process; the learning rate is a function of the step) and
``trainer_state.json`` (step, stage, position of the stage's sampler, mixture controller, held-out
losses and stage summaries so far, metrics lines written). Each is written to a temporary directory
and renamed once every process has written its part, so a crash never leaves half a checkpoint.
``resume_from: latest | DIR`` continues exactly: the stage's documents and bucket plan are
recomputed from the restored mixture weights (a pure function of them and the seed), the sampler
skips the batches already trained, and ``metrics.jsonl`` is cut back to the checkpoint's steps.

Loss: causal LM over every non-pad token, the mean over the tokens of the whole global step
(all ranks, all micro-batches), from TRL's fused LM head (no ``[B, T, V]`` logits).
"""

from __future__ import annotations

import json
import os
import random
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from accelerate.utils import GradientAccumulationPlugin
from tqdm.auto import tqdm

from align.core import distributed
from align.core.checkpoints import (
    atomic_checkpoint,
    checkpoint_to_resume,
    restore_accelerate_state,
)
from align.core.config import check_ranges, config_to_yaml, load_config, missing_inputs_error
from align.core.config import help_field as _help
from align.core.data import DataError, load_records, messages_of, read_table, split_held_out
from align.core.io import METRICS_FILE, MetricsFile, atomic_write_json, open_metrics
from align.core.mixture import epoch_composition, initial_mix
from align.core.mixture_control import MixtureControlConfig, MixtureController
from align.core.models import load_options, load_pretrained
from align.core.tensors import token_category_loss_sums
from align.core.tracking import (
    Tracker,
    check_report_to,
    project_field,
    report_to_field,
    run_name_field,
)
from align.pretrain.bucket_sampler import BucketBatchSampler
from align.pretrain.bucketing import (
    BucketConfig,
    Instance,
    bucket_documents,
    materialize,
    plan_metrics,
)
from align.tiny.build import build_tiny_world


@dataclass
class PretrainConfig:
    """Every knob of ``align pretrain`` / ``recipes/pretrain.py``. [S] a source states it, [P]
    ours."""

    config_renames: ClassVar[dict[str, str]] = {
        "resume_from_checkpoint": "resume_from",
        "mix_eta": "mix.eta",
        "mix_min_factor": "mix.min_factor",
        "mix_max_factor": "mix.max_factor",
        "mix_overfit_tolerance": "mix.overfit_tolerance",
    }

    model: str | None = _help(
        "Causal LM directory; none = the tiny world's policy (and its documents when docs is "
        "none); once given, docs is required."
    )
    docs: str | None = _help(
        "Documents {text, category?} (JSONL / Parquet / CSV); required with a model; none "
        "without one = tiny-world documents."
    )
    eval_docs: str | None = _help("Held-out documents; none = an eval_share split of docs.")
    eval_share: float = _help(
        "Held-out share of docs per category when eval_docs is none.", 0.05, gt=0, lt=1
    )
    output_dir: str = _help("Run directory.", "runs/pretrain")
    buckets: list[int] = _help(
        "Instance lengths [S: 2k/4k/8k/16k].", factory=lambda: [2048, 4096, 8192, 16384]
    )
    pad_threshold: float = _help("Largest padded share of an instance [P].", 0.1, ge=0, lt=1)
    pool_size: int = _help("Documents composed together [P].", 10_000, ge=1)
    tokens_per_step: int = _help(
        "Tokens per optimizer step over all processes; a multiple of bucket × processes.",
        4_194_304,
        ge=1,
    )
    micro_batch_tokens: int | None = _help(
        "Tokens per forward per process (gradient accumulation); none = the whole step slice.",
        ge=1,
    )
    num_stages: int = _help("Stages; the mixture moves between them.", 1, ge=1)
    stage_documents: int | None = _help(
        "Documents drawn per stage; none = all training docs.", ge=1
    )
    category_weights: dict[str, float] | None = _help(
        "Initial category shares; none = as in the data (XuanYuan2: finance 1:9 -> 1:4 [S])."
    )
    dynamic_mix: bool = _help("Move the weights after each stage by held-out loss [S].", True)
    mix: MixtureControlConfig = _help(
        "The mixture controller [P] (docs/methods.md §6).", factory=MixtureControlConfig
    )
    dtype: Literal["float32", "bfloat16", "float16"] = _help(
        "Dtype the model is loaded in (float32, bfloat16, float16). With DeepSpeed, bf16/fp16 "
        "mixed precision and fp32 master weights come from the accelerate config.",
        "float32",
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = _help(
        "Attention kernel (eager, sdpa, flash_attention_2); none = transformers' choice.", None
    )
    learning_rate: float = _help("Peak AdamW learning rate.", 1e-5, ge=0)
    warmup_steps: int = _help("Linear warm-up optimizer steps, then constant.", 0, ge=0)
    weight_decay: float = _help("AdamW weight decay.", 0.0, ge=0)
    max_grad_norm: float = _help("Gradient clipping norm (0 = off).", 1.0, ge=0)
    eval_batch_size: int = _help("Held-out documents per forward.", 8, ge=1)
    add_eos: bool = _help("Append the EOS token to every document.", True)
    logging_steps: int = _help("Log every N steps.", 10, ge=1)
    seed: int = _help("Seed of the draws, the bucket order and the model init.", 0, ge=0)
    save_every: int = _help(
        "Checkpoint every N optimizer steps; 0 = only at the end of each stage (always written).",
        0,
        ge=0,
    )
    save_total_limit: int | None = _help(
        "Keep only the N most recent checkpoints (older ones are deleted); none = keep all.",
        None,
        ge=1,
    )
    resume_from: str | None = _help(
        "Checkpoint to continue from: 'latest' (highest checkpoints/step-N of output_dir) or a "
        "directory; none = start afresh."
    )
    report_to: list[str] = report_to_field()
    project: str = project_field()
    run_name: str | None = run_name_field()

    def __post_init__(self) -> None:
        check_ranges(self)
        self.report_to = check_report_to(self.report_to)
        BucketConfig(tuple(self.buckets), self.pad_threshold, self.pool_size)  # validates
        if self.micro_batch_tokens is not None and self.micro_batch_tokens % max(self.buckets):
            raise ValueError(
                f"micro_batch_tokens: expected a multiple of the largest bucket "
                f"{max(self.buckets)}, got {self.micro_batch_tokens}"
            )

    def controller_config(self) -> MixtureControlConfig:
        return self.mix

    def bucket_config(self) -> BucketConfig:
        return BucketConfig(tuple(self.buckets), self.pad_threshold, self.pool_size)

    @classmethod
    def from_sources(cls, config=None, overrides: list[str] = ()) -> PretrainConfig:
        """YAML file (optional) then ``--field value`` overrides; unknown fields are errors."""
        return load_config(cls, config, overrides)

    def to_yaml(self) -> str:
        """The resolved config as YAML (reads back to an equal config)."""
        return config_to_yaml(self)


# --------------------------------------------------------------------------- documents


@dataclass
class Corpus:
    """Tokenized documents with their category indices."""

    tokens: list[list[int]]
    category_ids: list[int]
    categories: list[str]


def read_documents(path: str | Path) -> list[dict]:
    """``{text, category}`` rows (``category`` defaults to ``"default"``); errors name the row."""
    rows = []
    for k, row in enumerate(read_table(path), start=1):
        text = row.get("text")
        if not isinstance(text, str) or not text:
            raise DataError(path, k, "text", "a non-empty string", text)
        category = row.get("category") or "default"
        if not isinstance(category, str):
            raise DataError(path, k, "category", "a string", category)
        rows.append({"text": text, "category": category})
    if not rows:
        raise DataError(path, None, None, "at least one document")
    return rows


def tokenize_documents(rows: list[dict], tokenizer, categories: list[str], add_eos: bool) -> Corpus:
    index = {c: k for k, c in enumerate(categories)}
    eos = [tokenizer.eos_token_id] if add_eos else []
    ids = tokenizer([r["text"] for r in rows], add_special_tokens=False, verbose=False)["input_ids"]
    return Corpus([list(t) + eos for t in ids], [index[r["category"]] for r in rows], categories)


def tiny_documents(world, seed: int) -> list[dict]:
    """Documents of varied length from the tiny world: runs of 1-16 same-category Q&A texts
    (log-normal count), one category per document."""
    rng = random.Random(seed)
    by_cat: dict[str, list[str]] = {}
    for r in load_records(world.data("prefs"), "prefs"):
        q = messages_of(r)[-1]["content"]
        by_cat.setdefault(r["category"], []).append(f"问：{q}\n答：{r['chosen']}")
    docs = []
    for category, texts in sorted(by_cat.items()):
        rng.shuffle(texts)
        at = 0
        while at < len(texts):
            n = min(16, max(1, round(rng.lognormvariate(1.0, 0.8))))
            docs.append({"text": "\n".join(texts[at : at + n]), "category": category})
            at += n
    rng.shuffle(docs)
    return docs


def load_corpora(cfg: PretrainConfig, tokenizer, world=None) -> tuple[Corpus, Corpus]:
    """Training and held-out corpora (tokenized, EOS appended when ``add_eos``)."""
    rows = read_documents(cfg.docs) if cfg.docs else tiny_documents(world, cfg.seed)
    if cfg.eval_docs:
        train, held = rows, read_documents(cfg.eval_docs)
    else:
        train, held = split_held_out(rows, cfg.eval_share, cfg.seed)
    categories = sorted({r["category"] for r in train})
    held = [r for r in held if r["category"] in set(categories)]
    return (
        tokenize_documents(train, tokenizer, categories, cfg.add_eos),
        tokenize_documents(held, tokenizer, categories, cfg.add_eos),
    )


# --------------------------------------------------------------------------- math


def instance_tensors(
    instances: list[Instance], corpus: Corpus, doc_ids: list[int], pad_id: int
) -> dict[str, torch.Tensor]:
    """``input_ids`` [B, L], ``labels`` [B, L] (pad -> -100) and ``token_category`` [B, L - 1]
    (category of each next-token label, -1 on pad) for instances over ``doc_ids``."""
    docs = [corpus.tokens[d] for d in doc_ids]
    ids, cats = [], []
    for inst in instances:
        row, owner = materialize(inst, docs, pad_id)
        ids.append(row)
        cats.append([corpus.category_ids[doc_ids[o]] if o >= 0 else -1 for o in owner])
    input_ids, token_category = torch.tensor(ids), torch.tensor(cats)
    labels = input_ids.masked_fill(token_category < 0, -100)
    return {"input_ids": input_ids, "labels": labels, "token_category": token_category[:, 1:]}


# --------------------------------------------------------------------------- trainer


class BucketPretrainer:
    """The training loop: stages of bucketed instances, one optimizer step per global batch."""

    def __init__(
        self, cfg: PretrainConfig, model, tokenizer, train: Corpus, held: Corpus, accelerator=None
    ):
        self.cfg, self.tokenizer, self.train_corpus, self.held = cfg, tokenizer, train, held
        self.accelerator = accelerator or make_accelerator(micro_batches_per_step(cfg))
        self.accum = self.accelerator.gradient_accumulation_steps
        self.out = Path(cfg.output_dir)
        self.tracker = Tracker()  # opened by run() on the main process
        self.step = 0  # optimizer steps taken
        # where the run stands: the stage, the batches of its sampler already trained, the
        # held-out losses before training (None = not started) and the finished stages
        self.stage, self.stage_step = 0, 0
        self.held_out_before: dict[str, float] | None = None
        self.stages: list[dict] = []
        self.model, self.optimizer = self._prepare(model)
        counts = {c: 0 for c in train.categories}
        for k in train.category_ids:
            counts[train.categories[k]] += 1
        self.controller = MixtureController(
            initial_mix(counts, weights=cfg.category_weights), cfg.controller_config()
        )

    def _prepare(self, model):
        from trl.trainer.utils import add_fused_lm_head  # lazy: trl loads peft

        add_fused_lm_head(model)
        cfg = self.cfg
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        distributed.configure_deepspeed(
            self.accelerator,
            1,
            gradient_accumulation_steps=self.accum,
            gradient_clipping=cfg.max_grad_norm,
        )
        return self.accelerator.prepare(model, optimizer)

    def learning_rate(self) -> float:
        """Linear warm-up over ``warmup_steps`` optimizer steps, then constant."""
        return self.cfg.learning_rate * min(1.0, (self.step + 1) / max(self.cfg.warmup_steps, 1))

    # ---------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out token-mean loss per category (and ``all``), each document alone, cut to the
        largest bucket; documents are sharded over processes and the sums reduced. Every process
        runs the same number of forwards (ZeRO-3 gathers parameters in each): a process short of
        documents runs a masked stand-in batch."""
        acc, largest, n = self.accelerator, max(self.cfg.buckets), len(self.held.categories)
        size = self.cfg.eval_batch_size
        self.model.eval()
        totals = torch.zeros(2, n, dtype=torch.float64, device=acc.device)
        mine = list(range(acc.process_index, len(self.held.tokens), acc.num_processes))
        per_process = -(-len(self.held.tokens) // acc.num_processes)
        for start in range(0, per_process, size):
            docs = mine[start : start + size]
            batch = self._eval_batch(docs or [0], largest, counted=bool(docs))
            nll = self._token_nll(batch).double()
            sums, counts = token_category_loss_sums(nll, batch["token_category"], n)
            totals += torch.stack([sums, counts])
        totals = acc.reduce(totals, "sum").cpu()
        self.model.train()
        out = {c: (totals[0, k] / totals[1, k]).item() for k, c in enumerate(self.held.categories)}
        out["all"] = (totals[0].sum() / totals[1].sum()).item()
        return out

    def _eval_batch(self, docs: list[int], largest: int, counted: bool = True) -> dict:
        """Right-padded documents; ``counted=False`` leaves every token out of the sums."""
        pieces = [self.held.tokens[d][:largest] for d in docs]
        width = max(map(len, pieces))
        ids = torch.full((len(docs), width), self.tokenizer.pad_token_id)
        cats = torch.full((len(docs), width), -1)
        mask = torch.zeros((len(docs), width), dtype=torch.long)
        for i, (d, p) in enumerate(zip(docs, pieces)):
            ids[i, : len(p)], mask[i, : len(p)] = torch.tensor(p), 1
            if counted:
                cats[i, : len(p)] = self.held.category_ids[d]
        batch = {
            "input_ids": ids,
            "labels": ids.masked_fill(cats < 0, -100),
            "attention_mask": mask,
        }
        batch["token_category"] = cats[:, 1:]
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def _token_nll(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, T-1] next-token NLL (0 where the label is -100)."""
        inputs = {k: batch[k] for k in ("input_ids", "labels", "attention_mask") if k in batch}
        return -self.model(**inputs, fused_lm_head=True).log_probs.float()

    # ---------------------------------------------------------------- training

    def stage_plan(self, stage: int) -> tuple[list[int], list[Instance]]:
        """The documents drawn for ``stage`` by the current weights, and their bucket plan."""
        weights = [self.controller.weights[c] for c in self.train_corpus.categories]
        n_docs = self.cfg.stage_documents or len(self.train_corpus.tokens)
        doc_ids = epoch_composition(
            self.train_corpus.category_ids, weights, n_docs, self.cfg.seed * 7919 + stage
        )
        lengths = [len(self.train_corpus.tokens[d]) for d in doc_ids]
        return doc_ids, bucket_documents(lengths, self.cfg.bucket_config())

    def train_step(self, instances: list[Instance], doc_ids: list[int]) -> dict:
        """One optimizer step over this rank's slice of a global batch, in ``self.accum``
        micro-batches; the loss is the token mean over the whole global batch."""
        acc, cfg, n = self.accelerator, self.cfg, len(self.train_corpus.categories)
        batch = instance_tensors(instances, self.train_corpus, doc_ids, self.tokenizer.pad_token_id)
        size = batch["input_ids"].shape[1]
        per_micro = len(instances) // self.accum
        local_tokens = (batch["token_category"] >= 0).sum().double().to(acc.device)
        global_tokens = acc.reduce(local_tokens, "sum")
        # accelerate divides by the accumulation steps and DDP averages over processes
        scale = acc.num_processes * self.accum / global_tokens
        acc.gradient_accumulation_steps = self.accum  # (accelerate's gradient state is global)
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        totals = torch.zeros(2, n, dtype=torch.float64, device=acc.device)
        grad_norm = None
        for start in range(0, len(instances), per_micro):
            micro = {k: v[start : start + per_micro].to(acc.device) for k, v in batch.items()}
            with acc.accumulate(self.model):
                nll = self._token_nll(micro)
                acc.backward(nll.sum() * scale)
                if acc.sync_gradients and cfg.max_grad_norm and acc.distributed_type != "DEEPSPEED":
                    grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
            sums, counts = token_category_loss_sums(
                nll.detach().double(), micro["token_category"], n
            )
            totals += torch.stack([sums, counts])
        self.step += 1
        totals = acc.reduce(totals, "sum").cpu()
        return {**self._step_metrics(totals, size, grad_norm), "lr": lr}

    def _step_metrics(self, totals: torch.Tensor, bucket: int, grad_norm) -> dict:
        cats = self.train_corpus.categories
        out = {
            "step": self.step,
            "bucket": bucket,
            "loss": (totals[0].sum() / totals[1].sum()).item(),
        }
        out.update(
            {
                f"loss/{c}": (totals[0, k] / totals[1, k]).item()
                for k, c in enumerate(cats)
                if totals[1, k] > 0
            }
        )
        if grad_norm is not None:
            out["grad_norm"] = float(grad_norm)
        return out

    def run_stage(self, stage: int, progress=lambda step, metrics: None) -> dict:
        """Train the rest of ``stage``: from batch ``self.stage_step`` of its sampler (0 unless
        resumed mid-stage) to its end; checkpoints every ``save_every`` steps but at its last
        batch (the stage-end checkpoint follows the held-out evaluation)."""
        acc, cfg = self.accelerator, self.cfg
        doc_ids, plan = self.stage_plan(stage)
        sampler = BucketBatchSampler(
            [inst.size for inst in plan],
            cfg.tokens_per_step,
            acc.num_processes,
            acc.process_index,
            cfg.seed * 7919 + stage,
        )
        bar = tqdm(
            total=len(sampler),
            initial=self.stage_step,
            desc=f"stage {stage + 1}/{cfg.num_stages}",
            disable=not acc.is_main_process,
        )
        last = len(sampler) - 1
        for k, indices in enumerate(sampler):
            if k < self.stage_step:  # trained before the checkpoint this run resumed from
                continue
            metrics = self.train_step([plan[i] for i in indices], doc_ids)
            self.stage_step = k + 1
            if k % cfg.logging_steps == 0 or k == last:
                self.log({"stage": stage, **metrics})
            bar.update()
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", bucket=metrics["bucket"])
            if cfg.save_every and self.step % cfg.save_every == 0 and k < last:
                self.save_checkpoint()
            progress(self.step, metrics)
        bar.close()
        return {
            "stage": stage,
            "documents": len(doc_ids),
            "steps": len(sampler),
            "instances_dropped": sampler.dropped,
            "buckets": plan_metrics(plan, len(doc_ids)).as_dict(),
        }

    def log(self, record: dict) -> None:
        """One line of ``metrics.jsonl`` (main process); every record has its ``step``."""
        if self.accelerator.is_main_process:
            MetricsFile(self.out / METRICS_FILE).append(record)
            self.tracker.log(record, step=record["step"])

    def train(self, progress=lambda step, metrics: None) -> dict:
        """Evaluate; then per stage: compose, train, evaluate, move the mixture, checkpoint.
        A resumed trainer (:meth:`load_checkpoint`) continues from where its checkpoint stood."""
        if self.held_out_before is None:
            before = self.evaluate()
            self.log({"step": 0, **{f"eval_loss/{c}": v for c, v in before.items()}})
            self.controller.observe_start({c: before[c] for c in self.train_corpus.categories})
            self.held_out_before = before
        for stage in range(self.stage, self.cfg.num_stages):
            self.stages.append(self.finish_stage(stage, self.run_stage(stage, progress)))
            self.stage, self.stage_step = stage + 1, 0
            self.save_checkpoint()
        return {
            "held_out_before": self.held_out_before,
            "held_out_after": self.stages[-1]["held_out"],
            "stages": self.stages,
            "mixture": self.controller.state_dict(),
            "steps": self.step,
        }

    def finish_stage(self, stage: int, info: dict) -> dict:
        """Held-out evaluation after ``stage``; the mixture moves (but after the last stage)."""
        held = self.evaluate()
        info["held_out"] = held
        if self.cfg.dynamic_mix and stage < self.cfg.num_stages - 1:
            cats = self.train_corpus.categories
            info["weights_next"] = self.controller.update({c: held[c] for c in cats})
        self.log(
            {
                "step": self.step,
                **{f"eval_loss/{c}": v for c, v in held.items()},
                **{f"mix/{c}": w for c, w in self.controller.weights.items()},
            }
        )
        return info

    # ---------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> Path:
        """``checkpoints/step-N/``: ``model/`` (HF safetensors + tokenizer), ``accelerate/``
        (model, optimizer, RNG states of every process) and ``trainer_state.json``. Written to
        a temporary directory, renamed once every process has written its shards."""
        acc = self.accelerator
        final = self.out / "checkpoints" / f"step-{self.step}"
        with atomic_checkpoint(acc, final, self.cfg.save_total_limit) as tmp:
            self.save(tmp / "model")
            acc.save_state(str(tmp / "accelerate"))
            if acc.is_main_process:
                text = json.dumps(self.trainer_state(), indent=1, ensure_ascii=False)
                (tmp / "trainer_state.json").write_text(text + "\n", encoding="utf-8")
        return final

    def trainer_state(self) -> dict:
        """Everything besides the accelerate state that the rest of the run depends on."""
        return {
            "step": self.step,
            "stage": self.stage,
            "stage_step": self.stage_step,  # batches of the stage's sampler already trained
            "sampler_seed": self.cfg.seed * 7919 + self.stage,
            "controller": self.controller.state_dict(),
            "held_out_before": self.held_out_before,
            "stages": self.stages,
            "config": asdict(self.cfg),
        }

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything :meth:`save_checkpoint` wrote; cut ``metrics.jsonl`` back to the
        checkpoint's steps (a crashed run's tail is dropped)."""
        if not (path / "trainer_state.json").is_file():
            raise FileNotFoundError(f"{path}: not a pretraining checkpoint (no trainer_state.json)")
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        warn_config_changes(state["config"], self.cfg)
        restore_accelerate_state(self.accelerator, path / "accelerate")
        self.step, self.stage, self.stage_step = state["step"], state["stage"], state["stage_step"]
        self.controller.load_state_dict(state["controller"])
        self.held_out_before, self.stages = state["held_out_before"], state["stages"]
        if self.accelerator.is_main_process:
            open_metrics(self.out / METRICS_FILE, self.step)
        self.accelerator.wait_for_everyone()

    def save(self, path: Path) -> None:
        """HF format (safetensors) + tokenizer; gathered under ZeRO-3."""
        acc = self.accelerator
        state = acc.get_state_dict(self.model)
        if acc.is_main_process:
            acc.unwrap_model(self.model).save_pretrained(
                path, state_dict=state, safe_serialization=True
            )
            self.tokenizer.save_pretrained(path)
        acc.wait_for_everyone()


# fields that may change on resume without changing the rest of the run
_RESUME_FREE = {"resume_from", "save_every", "save_total_limit", "output_dir", "report_to"}
_RESUME_FREE |= {"project", "run_name"}


def warn_config_changes(saved: dict, cfg: PretrainConfig) -> None:
    """Warn when a resumed run's config differs from its checkpoint's in a field that changes
    the rest of the run (a resumed run continues exactly only under the same config)."""
    changed = sorted(
        name
        for name, value in asdict(cfg).items()
        if name not in _RESUME_FREE and name in saved and saved[name] != value
    )
    if changed:
        warnings.warn(
            f"resume_from: the config differs from the checkpoint's in {changed}; "
            "the run will not continue exactly as it would have",
            stacklevel=2,
        )


def resume_checkpoint(cfg: PretrainConfig) -> Path | None:
    """The checkpoint ``cfg.resume_from`` names, or None for a fresh run (see
    :func:`align.core.checkpoints.checkpoint_to_resume`)."""
    marker = "trainer_state.json"
    return checkpoint_to_resume(cfg.output_dir, cfg.resume_from, "pretraining", marker)


def micro_batches_per_step(cfg: PretrainConfig) -> int:
    """Forward/backward passes per optimizer step: the same for every bucket, because a
    micro-batch holds ``micro_batch_tokens`` tokens whatever its bucket."""
    per_rank = cfg.tokens_per_step // int(os.environ.get("WORLD_SIZE", "1"))
    micro = cfg.micro_batch_tokens or per_rank
    if per_rank % micro:
        raise ValueError(
            f"micro_batch_tokens: expected a divisor of the tokens per step per process "
            f"({per_rank}), got {micro}"
        )
    return per_rank // micro


def make_accelerator(accumulation_steps: int):
    """An ``Accelerator`` that accumulates ``accumulation_steps`` micro-batches per optimizer
    step by counting them (no dataloader here to mark an epoch's end), and that also runs several
    processes on a CPU-only machine (:func:`align.core.distributed.make_accelerator`)."""
    plugin = GradientAccumulationPlugin(num_steps=accumulation_steps, sync_with_dataloader=False)
    return distributed.make_accelerator(gradient_accumulation_plugin=plugin)


# --------------------------------------------------------------------------- run


def check_inputs(cfg: PretrainConfig) -> None:
    """With a ``model`` given, nothing comes from the tiny world: ``docs`` is required (one line
    naming it otherwise)."""
    if cfg.model and cfg.docs is None:
        raise missing_inputs_error(
            ("model", cfg.model), [("docs", "documents {text, category?} (JSONL / Parquet / CSV)")]
        )


def run(cfg: PretrainConfig, progress=lambda step, metrics: None) -> dict:
    """Load (and resume from ``cfg.resume_from``), train all stages, save ``output_dir/final``;
    write ``summary.json``/``report.md``."""
    check_inputs(cfg)  # before anything loads
    # lazy: transformers' Auto classes (~2 s) stay off 'align pretrain --help'
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resume = resume_checkpoint(cfg)
    world = None if cfg.model else build_tiny_world()[0]  # no model: the tiny world fills in
    model_dir = cfg.model or str(world.policy)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train, held = load_corpora(cfg, tokenizer, world)
    # before the model loads: under DeepSpeed ZeRO-3 it then loads partitioned
    accelerator = make_accelerator(micro_batches_per_step(cfg))
    options = load_options(cfg.dtype, cfg.attn_implementation)
    model = load_pretrained(AutoModelForCausalLM, model_dir, "model", **options)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = BucketPretrainer(cfg, model, tokenizer, train, held, accelerator=accelerator)
    if trainer.accelerator.is_main_process:
        if resume is None:
            open_metrics(out / METRICS_FILE, None)
        (out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        trainer.tracker = Tracker.start(cfg.report_to, out, cfg.project, cfg.run_name, asdict(cfg))
    trainer.accelerator.wait_for_everyone()
    if resume is not None:
        trainer.load_checkpoint(resume)
    summary = trainer.train(progress)
    trainer.save(out / "final")
    summary.update(
        {
            "categories": train.categories,
            "final": str(out / "final"),
            "documents": {"train": len(train.tokens), "held_out": len(held.tokens)},
        }
    )
    if trainer.accelerator.is_main_process:
        atomic_write_json(out / "summary.json", summary)
        (out / "report.md").write_text(report_markdown(summary), encoding="utf-8")
    trainer.tracker.finish()
    trainer.accelerator.end_training()
    return summary


def report_markdown(summary: dict) -> str:
    before, after = summary["held_out_before"], summary["held_out_after"]
    lines = [
        "# Continued pretraining run",
        "",
        "| category | held-out loss before | after |",
        "|---|---|---|",
    ]
    lines += [f"| {c} | {before[c]:.4f} | {after[c]:.4f} |" for c in summary["categories"]]
    lines.append(f"| **all** | {before['all']:.4f} | {after['all']:.4f} |")
    lines += [
        "",
        "| stage | documents | steps | pad % | trunc % | concat |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary["stages"]:
        b = s["buckets"]
        lines.append(
            f"| {s['stage']} | {s['documents']} | {s['steps']} | {100 * b['padding_ratio']:.2f} "
            f"| {100 * b['truncation_ratio']:.2f} | {b['concatenation_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"
