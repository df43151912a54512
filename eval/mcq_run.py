"""Running an MCQ benchmark: prompts → answers (through any rollout engine) → accuracies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from align.core.config import check_ranges
from align.core.config import help_field as _help
from align.core.tracking import (
    Tracker,
    check_report_to,
    project_field,
    report_to_field,
    run_name_field,
)
from eval.generation import as_engine, encode_prompts, generate_from_ids
from eval.mcq import (
    OPTIONS,
    MCQItem,
    MCQResult,
    accuracy_summary,
    build_prompt,
    extract_choice,
    load_split,
    option_continuations,
    option_logprobs,
)
from rollouts.base import SamplingParams

SCORINGS = ("generate", "loglik", "both")
PROMPT_FORMATS = ("auto", "chat", "raw")


@dataclass
class MCQConfig:
    """``align eval mcq``: an exam benchmark in the FinanceIQ / CMMLU / C-Eval layout."""

    data: str = field(
        metadata={"help": "Benchmark folder holding <split>/*.csv (and dev/*.csv for shots)."}
    )
    split: str = _help("Folder of the questions to score (FinanceIQ: test; or dev).", "test")
    shots: int = _help(
        "Worked examples from dev/ before each question: 0 or 5 (FinanceIQ).", 0, ge=0
    )
    scoring: Literal["generate", "loglik", "both"] = _help(
        "generate (extract the letter from a greedy answer, FinanceIQ's way), loglik (most "
        "likely letter as the answer's first token), or both.",
        "generate",
    )
    prompt_format: Literal["auto", "chat", "raw"] = _help(
        "chat: the exam prompt as a user turn through the tokenizer's chat template; raw: the "
        "text itself (base models, as FinanceIQ feeds them); auto: chat when the tokenizer has "
        "a template.",
        "auto",
    )
    max_new_tokens: int = _help("Answer length cap for generate scoring.", 32, ge=1)
    max_length: int = _help(
        "Prompt token budget: shots are dropped longest first past it (FinanceIQ), and longer "
        "prompts are left-truncated (counted).",
        2048,
        ge=1,
    )
    batch_size: int = _help("Prompts per engine / model call.", 16, ge=1)
    limit: int | None = _help("Score only the first N questions of each category.", None, ge=1)
    policy: str | None = _help(
        "Policy directory (`align eval mcq`); none = the tiny world's SFT policy (the one input "
        "it fills in: data is always required).",
        None,
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = _help(
        "Dtype the policy is loaded in (float32, bfloat16, float16); loglik scores are computed "
        "in float32 whatever it is; none = the checkpoint's own (its config.json).",
        None,
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = _help(
        "Attention kernel of the policy (eager, sdpa, flash_attention_2); none = transformers' "
        "choice for the model.",
        None,
    )
    out: str = _help("Run directory for the report (`align eval mcq`).", "runs/eval-mcq")
    report_to: list[str] = report_to_field()
    project: str = project_field()
    run_name: str | None = run_name_field()

    def __post_init__(self) -> None:
        check_ranges(self)
        self.report_to = check_report_to(self.report_to)
        if not self.data:
            raise ValueError("data: a benchmark folder (holding <split>/*.csv) is required")
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring: expected one of {SCORINGS}, got {self.scoring!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"prompt_format: expected one of {PROMPT_FORMATS}, got {self.prompt_format!r}"
            )


@dataclass
class MCQPrompts:
    """The questions in scoring order and their prompt texts."""

    items: list[MCQItem]
    texts: list[str]


def _shots_for(cfg: MCQConfig, categories: list[str]) -> dict[str, list[MCQItem]]:
    if cfg.shots == 0:
        return {c: [] for c in categories}
    dev = load_split(cfg.data, "dev")
    out = {}
    for c in categories:
        if len(dev.get(c, [])) < cfg.shots:
            raise ValueError(
                f"shots: {cfg.data}/dev has {len(dev.get(c, []))} questions for category {c!r}, "
                f"expected at least {cfg.shots}"
            )
        out[c] = dev[c][: cfg.shots]
    return out


def build_prompts(cfg: MCQConfig, tokenizer=None) -> MCQPrompts:
    """Every question of the split (``limit`` per category) with its FinanceIQ prompt."""
    split = load_split(cfg.data, cfg.split)
    shots = _shots_for(cfg, list(split))
    count = None if tokenizer is None else (lambda t: len(tokenizer(t, verbose=False)["input_ids"]))
    items, texts = [], []
    for category, questions in split.items():
        for item in questions[: cfg.limit]:
            items.append(item)
            texts.append(build_prompt(category, item, shots[category], count, cfg.max_length))
    return MCQPrompts(items, texts)


def uses_chat_template(cfg: MCQConfig, tokenizer) -> bool:
    if cfg.prompt_format == "auto":
        return bool(getattr(tokenizer, "chat_template", None))
    return cfg.prompt_format == "chat"


def evaluate_mcq(
    engine_or_policy,
    tokenizer,
    cfg: MCQConfig,
    model: torch.nn.Module | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, MCQResult]:
    """``{scoring: MCQResult}`` for the configured scoring(s).

    ``engine_or_policy``: a rollout engine or a causal LM module. ``loglik`` needs the module
    (``model``, or ``engine_or_policy`` itself when it is one): the rollout protocol returns the
    logprobs of sampled tokens only. ``on_batch(k)`` reports progress in questions.
    """
    prompts = build_prompts(cfg, tokenizer)
    chat = uses_chat_template(cfg, tokenizer)
    full, _ = encode_prompts(tokenizer, prompts.texts, chat)
    truncated = [len(x) > cfg.max_length for x in full]
    ids = [x[-cfg.max_length :] for x in full]
    results = {}
    if cfg.scoring in ("generate", "both"):
        engine = as_engine(engine_or_policy, tokenizer, cfg.batch_size)
        sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=0.0)
        answers = generate_from_ids(engine, tokenizer, ids, sampling, cfg.batch_size, on_batch)
        letters = [extract_choice(a) for a in answers]
        results["generate"] = _result(prompts.items, answers, letters, truncated, "generate")
    if cfg.scoring in ("loglik", "both"):
        model = model if model is not None else engine_or_policy
        if not isinstance(model, torch.nn.Module):
            raise ValueError("scoring loglik needs the policy model (a torch module)")
        letters = loglik_choices(model, tokenizer, ids, chat, cfg.batch_size, on_batch)
        results["loglik"] = _result(prompts.items, None, letters, truncated, "loglik")
    return results


def loglik_choices(model, tokenizer, ids, chat: bool, batch_size: int, on_batch=None) -> list[str]:
    """The most likely option letter after each prompt."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    continuations = option_continuations(tokenizer, chat)
    was_training = model.training
    model.eval()
    letters = []
    try:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            scores = option_logprobs(model, chunk, continuations, pad, batch_size)
            letters += [OPTIONS[k] for k in scores.argmax(-1).tolist()]
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        model.train(was_training)
    return letters


def _result(
    items: list[MCQItem],
    outputs: list[str] | None,
    letters: list[str | None],
    truncated: list[bool],
    scoring: str,
) -> MCQResult:
    result = accuracy_summary(items, letters, scoring)
    for c in result.per_category.values():
        c["truncated_prompts"] = 0
    for item, cut in zip(items, truncated):
        result.per_category[item.category]["truncated_prompts"] += int(cut)
    result.predictions = [
        {"category": item.category, "row": item.row, "answer": item.answer, "prediction": letter}
        for item, letter in zip(items, letters)
    ]
    for record, out in zip(result.predictions, outputs or []):
        record["output"] = out
    return result


#: Questions shown in the trackers' table of sample answers.
TRACKER_SAMPLES = 32


def report_to_trackers(cfg: MCQConfig, results: dict[str, MCQResult]) -> None:
    """Accuracies (``mcq/<scoring>/{macro,micro,<category>}``, step 0) and, per scoring, a
    table of the first questions' answers, to the trackers of ``cfg.report_to``."""
    if not cfg.report_to:
        return
    tracker = Tracker.start(cfg.report_to, cfg.out, cfg.project, cfg.run_name, asdict(cfg))
    for scoring, result in results.items():
        scalars = {f"mcq/{scoring}/macro": result.macro, f"mcq/{scoring}/micro": result.micro}
        scalars.update(
            {f"mcq/{scoring}/{c}": v["accuracy"] for c, v in result.per_category.items()}
        )
        tracker.log(scalars, step=0)
        rows = [
            {**p, "correct": p["prediction"] == p["answer"]}
            for p in result.predictions[:TRACKER_SAMPLES]
        ]
        tracker.log_samples(rows, step=0, name=f"samples/{scoring}")
    tracker.finish()
