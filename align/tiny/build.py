"""Build the embedded tiny world: data, tokenizer, SFT-ed policy, reward backbone. Cached.

Layout of a built world (``TinyWorld``)::

    manifest.json            config, cache key, counts, on-format and reward before/after SFT
    data/sft.jsonl           {messages, category}
    data/prefs.jsonl         {prompt | messages, chosen, rejected, category}
    data/prompts.jsonl       RL prompts {id, prompt | messages, category, reference}
    data/eval_prompts.jsonl  held-out prompts (same fields)
    data/eval_prefs.jsonl    held-out preference pairs
    tokenizer/               byte-level BPE with <pad> <s> </s> and the xuanyuan-6b chat template
    policy/                  tiny LlamaForCausalLM, briefly SFT-ed (answer-only loss)
    reward/                  LlamaForSequenceClassification: the SFT body + a fresh scalar head
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from align.core.config import check_ranges, help_field
from align.core.data import messages_of, write_jsonl
from align.core.io import atomic_directory
from align.tiny.reward import follows_shape, tiny_world_reward
from align.tiny.world import CATEGORIES, Item, generate

WORLD_VERSION = 2  # bump when the generator, the models or the training change
CHAT_FORMAT = "xuanyuan-6b"
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


def default_tiny_dir() -> Path:
    """``$ALIGN_CACHE/tiny-world``, by default ``~/.cache/align/tiny-world``."""
    root = os.environ.get("ALIGN_CACHE") or Path.home() / ".cache" / "align"
    return Path(root) / "tiny-world"


@dataclass
class TinyWorldConfig:
    """What `align tiny build` makes. Changing any field changes the cache key."""

    seed: int = help_field("Seed of the data generator and of training.", 0, ge=0)
    sft_per_category: int = help_field("SFT conversations per sub-domain.", 400, ge=1)
    prefs_per_category: int = help_field("Preference pairs per sub-domain.", 300, ge=1)
    rl_prompts_per_category: int = help_field("RL prompts per sub-domain.", 200, ge=1)
    eval_per_category: int = help_field("Held-out prompts and pairs per sub-domain.", 50, ge=1)
    sft_noise: float = help_field(
        "Share of SFT demonstrations that break their rule (the rejected answer): real SFT data "
        "is noisy, and it leaves PPO something to fix.",
        0.3,
        ge=0,
        lt=0.5,
    )
    vocab_size: int = help_field("BPE vocabulary size.", 4096, ge=16)
    hidden_size: int = help_field("Model width (head_dim = width/heads).", 128, ge=1)
    num_layers: int = help_field("Decoder layers.", 4, ge=1)
    num_heads: int = help_field("Attention heads (head_dim >= 32 for vLLM).", 4, ge=1)
    num_kv_heads: int = help_field("Key/value heads (GQA).", 2, ge=1)
    intermediate_size: int = help_field("MLP width.", 352, ge=1)
    max_length: int = help_field("Longest tokenized conversation.", 192, ge=16)
    sft_epochs: float = help_field("Epochs of the brief SFT.", 4.0, gt=0)
    sft_lr: float = help_field("Peak learning rate of the brief SFT.", 3e-3, ge=0)
    sft_batch_size: int = help_field("SFT batch size.", 32, ge=1)
    eval_max_new_tokens: int = help_field(
        "Greedy answer length cap when measuring the format rate.", 64, ge=1
    )

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.hidden_size % self.num_heads or self.hidden_size // self.num_heads < 32:
            raise ValueError(
                f"hidden_size / num_heads: expected a whole head_dim >= 32 (vLLM's CPU attention "
                f"rejects smaller), got {self.hidden_size} / {self.num_heads}"
            )
        if not 0 <= self.sft_noise < 0.5:
            raise ValueError(f"sft_noise: expected in [0, 0.5), got {self.sft_noise}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads: expected a divisor of num_heads, got {self.num_kv_heads}"
            )

    def cache_key(self) -> str:
        blob = json.dumps({"version": WORLD_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TinyWorld:
    """Paths into a built tiny world."""

    root: Path

    @property
    def manifest(self) -> dict:
        return json.loads((self.root / "manifest.json").read_text(encoding="utf-8"))

    def data(self, name: str) -> Path:
        return self.root / "data" / f"{name}.jsonl"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def policy(self) -> Path:
        return self.root / "policy"

    @property
    def reward(self) -> Path:
        return self.root / "reward"


# ---------------------------------------------------------------- data


def _prompt_fields(item: Item) -> dict:
    if len(item.messages) == 1:
        return {"prompt": item.prompt}
    return {"messages": [dict(m) for m in item.messages]}


def _noise_flags(items: list[Item], share: float, seed: int) -> list[bool]:
    """Which SFT demonstrations get the rejected answer, seeded.

    Only items whose rejected answer breaks the sub-domain's shape are eligible: a promise of
    returns, a rude reply, a dismissal; those are behaviours a rule or a reward model can tell
    apart. Wrong facts are never taught.
    """
    rng = random.Random(seed)
    return [not follows_shape(i.category, i.rejected) and rng.random() < share for i in items]


def _records(cfg: TinyWorldConfig) -> dict[str, list[dict]]:
    sft = generate(cfg.sft_per_category, cfg.seed * 10 + 1)
    prefs = generate(cfg.prefs_per_category, cfg.seed * 10 + 2)
    rl = generate(cfg.rl_prompts_per_category, cfg.seed * 10 + 3)
    seen = frozenset(i.key for i in sft + prefs + rl)
    eval_prompts = generate(cfg.eval_per_category, cfg.seed * 10 + 4, exclude=seen)
    eval_prefs = generate(cfg.eval_per_category, cfg.seed * 10 + 5, exclude=seen)

    def prompt_record(k: int, split: str, item: Item) -> dict:
        return {
            "id": f"{split}-{k}",
            **_prompt_fields(item),
            "category": item.category,
            "reference": item.chosen,
        }

    def pref_record(item: Item) -> dict:
        return {
            **_prompt_fields(item),
            "chosen": item.chosen,
            "rejected": item.rejected,
            "category": item.category,
        }

    return {
        "sft": [
            {
                "messages": [
                    *map(dict, item.messages),
                    {"role": "assistant", "content": item.rejected if noisy else item.chosen},
                ],
                "category": item.category,
            }
            for item, noisy in zip(sft, _noise_flags(sft, cfg.sft_noise, cfg.seed))
        ],
        "prefs": [pref_record(i) for i in prefs],
        "prompts": [prompt_record(k, "rl", i) for k, i in enumerate(rl)],
        "eval_prompts": [prompt_record(k, "eval", i) for k, i in enumerate(eval_prompts)],
        "eval_prefs": [pref_record(i) for i in eval_prefs],
    }


def write_data(
    directory: str | os.PathLike[str], cfg: TinyWorldConfig | None = None
) -> dict[str, int]:
    """The data files of a world built with ``cfg`` (``<directory>/<name>.jsonl``, as under
    ``data/`` above), without its tokenizer and models; returns the record counts by name."""
    records = _records(cfg or TinyWorldConfig())
    return {
        name: write_jsonl(rows, Path(directory) / f"{name}.jsonl") for name, rows in records.items()
    }


# ---------------------------------------------------------------- tokenizer and models


def train_tokenizer(texts: list[str], cfg: TinyWorldConfig):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with the tiny world's chat template."""
    # lazy: transformers (here and below) stays off 'align tiny build --help'
    from transformers import PreTrainedTokenizerFast

    from align.core.chat_formats import get_chat_format  # lazy: loads transformers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, model_max_length=cfg.max_length, **SPECIAL_TOKENS
    )
    get_chat_format(CHAT_FORMAT).apply_to(tokenizer)
    return tokenizer


def make_policy(tokenizer, cfg: TinyWorldConfig):
    """A randomly initialised tiny ``LlamaForCausalLM`` (seeded)."""
    # lazy: torch/transformers stay off 'align tiny build --help'
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_length * 2,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def sft_policy(model, tokenizer, records: list[dict], cfg: TinyWorldConfig, workdir: Path):
    """Brief answer-only SFT with TRL's ``SFTTrainer`` (loss on assistant spans, EOS included)."""
    from trl import SFTConfig, SFTTrainer  # lazy: trl loads transformers' Trainer and peft

    args = SFTConfig(
        output_dir=str(workdir),
        assistant_only_loss=True,
        max_length=cfg.max_length,
        num_train_epochs=cfg.sft_epochs,
        learning_rate=cfg.sft_lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        per_device_train_batch_size=cfg.sft_batch_size,
        weight_decay=0.0,
        seed=cfg.seed,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=False,
        dataset_num_proc=None,
    )
    from datasets import Dataset  # lazy: only building trains (random_models runs without it)

    dataset = Dataset.from_list([{"messages": r["messages"]} for r in records])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    return trainer.model


def make_reward_backbone(policy, seed: int):
    """The policy's sequence-classification model (one logit): its body and a fresh head
    (seeded), for any architecture (the body is ``base_model``, whatever the model calls it).

    The UFRM architecture: the chat LM without ``lm_head`` plus a randomly initialised linear head.
    """
    # lazy: torch/transformers stay off 'align tiny build --help'
    import torch
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    config.architectures = None
    torch.manual_seed(seed + 1)
    reward = AutoModelForSequenceClassification.from_config(config)
    reward.base_model.load_state_dict(policy.base_model.state_dict())
    return reward


# ---------------------------------------------------------------- measurement


def measure_policy(model, tokenizer, records: list[dict], max_new_tokens: int) -> dict:
    """Greedy answers to held-out prompts: on-format rate and rule-based reward, per sub-domain.

    On format = the answer ends with EOS and takes its sub-domain's shape.
    """
    # lazy: these load torch/transformers, kept off 'align tiny build --help'
    from align.core.chat_formats import get_chat_format
    from rollouts.base import SamplingParams
    from rollouts.hf_generate import GenerateEngine

    fmt = get_chat_format("hf")
    prompt_ids = [
        tokenizer(
            fmt.render(messages_of(r), add_generation_prompt=True, tokenizer=tokenizer),
            add_special_tokens=False,
        )["input_ids"]
        for r in records
    ]
    engine = GenerateEngine.from_tokenizer(model, tokenizer, batch_size=64)
    batch = engine.generate(
        prompt_ids, SamplingParams(max_new_tokens=max_new_tokens, temperature=0)
    )
    answers = tokenizer.batch_decode(batch.completion_ids, skip_special_tokens=True)
    categories = [r["category"] for r in records]
    rewards = tiny_world_reward(
        [None] * len(records),
        answers,
        category=categories,
        reference=[r["reference"] for r in records],
    )
    on_format = [
        reason == "stop" and follows_shape(c, a)
        for reason, c, a in zip(batch.finish_reasons, categories, answers)
    ]
    return _summarise(categories, on_format, rewards)


def _summarise(categories: list[str], on_format: list[bool], rewards: list[float]) -> dict:
    def mean(xs: list[float]) -> float:
        return round(sum(xs) / len(xs), 4) if xs else float("nan")

    per = {
        c: {
            "on_format": mean([float(f) for f, k in zip(on_format, categories) if k == c]),
            "reward": mean([r for r, k in zip(rewards, categories) if k == c]),
        }
        for c in CATEGORIES
    }
    return {
        "on_format": mean([float(f) for f in on_format]),
        "reward": mean(rewards),
        "per_category": per,
        "n": len(categories),
    }


# ---------------------------------------------------------------- orchestration


def load_world(out: Path, cfg: TinyWorldConfig) -> TinyWorld | None:
    """The world at ``out`` if it was built with ``cfg``, else ``None``."""
    manifest = out / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        key = json.loads(manifest.read_text(encoding="utf-8")).get("cache_key")
    except json.JSONDecodeError:
        return None
    return TinyWorld(out) if key == cfg.cache_key() else None


def build_tiny_world(
    out: Path | None = None,
    cfg: TinyWorldConfig | None = None,
    force: bool = False,
    on_stage: Callable[[str], None] = lambda _: None,
) -> tuple[TinyWorld, bool]:
    """Build (or find cached) the tiny world. Returns ``(world, built_now)``.

    The world is written to a temporary sibling directory and renamed into place, so an
    interrupted build never leaves a half world behind. An existing directory that is not a tiny
    world is never overwritten.
    """
    cfg = cfg or TinyWorldConfig()
    out = Path(out) if out is not None else default_tiny_dir()
    if not force and (world := load_world(out, cfg)) is not None:
        return world, False
    if out.exists() and not (out / "manifest.json").is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not a tiny world; choose another --out")
    with atomic_directory(out) as tmp:
        _build_into(tmp, cfg, on_stage)
    return TinyWorld(out), True


@contextlib.contextmanager
def _quiet_library_bars():
    """Hide datasets' and transformers' per-step bars (map, shard writing); SFT keeps its own."""
    # lazy: off 'align tiny build --help'; datasets only when building (the GPU bench has none)
    import datasets
    from transformers.utils import logging as hf_logging

    datasets_on = datasets.is_progress_bar_enabled()
    hf_on = hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_on:
            datasets.enable_progress_bars()
        if hf_on:
            hf_logging.enable_progress_bar()


def _build_into(root: Path, cfg: TinyWorldConfig, on_stage: Callable[[str], None]) -> None:
    with _quiet_library_bars():
        _build_steps(root, cfg, on_stage)


def _build_steps(root: Path, cfg: TinyWorldConfig, on_stage: Callable[[str], None]) -> None:
    # lazy: torch/transformers stay off 'align tiny build --help'
    import torch

    from align.core.chat_formats import get_chat_format

    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    on_stage("generating data")
    records = _records(cfg)
    for name, rows in records.items():
        write_jsonl(rows, root / "data" / f"{name}.jsonl")

    on_stage("training the tokenizer")
    fmt = get_chat_format(CHAT_FORMAT)
    texts = [fmt.render(r["messages"]) for r in records["sft"]]
    texts += [
        fmt.render([*messages_of(r), {"role": "assistant", "content": r[side]}])
        for r in records["prefs"]
        for side in ("chosen", "rejected")
    ]
    tokenizer = train_tokenizer(texts, cfg)
    tokenizer.save_pretrained(root / "tokenizer")

    on_stage("measuring the untrained policy")
    policy = make_policy(tokenizer, cfg)
    before = measure_policy(policy, tokenizer, records["eval_prompts"], cfg.eval_max_new_tokens)

    on_stage("SFT of the policy")
    policy = sft_policy(policy, tokenizer, records["sft"], cfg, root / "sft-work")
    shutil.rmtree(root / "sft-work", ignore_errors=True)
    on_stage("measuring the SFT policy")
    after = measure_policy(policy, tokenizer, records["eval_prompts"], cfg.eval_max_new_tokens)

    on_stage("saving models")
    policy.save_pretrained(root / "policy", safe_serialization=True)
    tokenizer.save_pretrained(root / "policy")
    reward = make_reward_backbone(policy, cfg.seed)
    reward.save_pretrained(root / "reward", safe_serialization=True)
    tokenizer.save_pretrained(root / "reward")

    manifest = {
        "world_version": WORLD_VERSION,
        "cache_key": cfg.cache_key(),
        "config": asdict(cfg),
        "chat_format": CHAT_FORMAT,
        "counts": {name: len(rows) for name, rows in records.items()},
        "parameters": sum(p.numel() for p in policy.parameters()),
        "vocab_size": len(tokenizer),
        "held_out_before_sft": before,
        "held_out_after_sft": after,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    (root / "manifest.json").write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8"
    )
