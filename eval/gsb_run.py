"""A GSB comparison end to end: answers of two policies → a judge → rates → report.

:func:`compare` is the step PEI calls each round (answers already generated);
:func:`run_gsb` loads policies and prompts from a :class:`GSBConfig` (``align eval gsb``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from align.core.config import check_ranges, missing_inputs_error
from align.core.config import help_field as _help
from align.core.data import load_records, write_jsonl
from align.core.models import check_model_dir, load_options, load_pretrained
from align.core.outputs import check_output_dir
from align.core.tracking import (
    Tracker,
    check_report_to,
    project_field,
    report_to_field,
    run_name_field,
)
from eval.generation import generate_answers
from eval.gsb import GSBReport, summarize
from eval.judges import Judge, RewardJudge
from eval.llm_judge import LLMJudge, LLMJudgeConfig
from rm.spec import REWARDS_EXPECTED, RewardSpec, as_specs
from rollouts.base import SamplingParams

_NOT_COLUMNS = {"prompt", "messages", "category", "id"}
#: Old spellings of GSBConfig fields, still read (with a warning, once each).
OLD_SPELLINGS = {
    "llm_base_url": "llm_judge.base_url",
    "llm_model": "llm_judge.model",
    "api_key_env": "llm_judge.api_key_env",
    "reward_model": "rewards",
}


@dataclass
class GSBConfig:
    """``align eval gsb``: a candidate policy against a baseline on held-out prompts."""

    config_renames: ClassVar[dict[str, str]] = OLD_SPELLINGS

    candidate: str = field(metadata={"help": "Candidate policy directory (HF format)."})
    baseline: str | None = _help(
        "Baseline policy directory (required); `align eval gsb` also takes 'tiny': the tiny "
        "world's SFT policy.",
        None,
    )
    prompts: str | None = _help(
        "Held-out prompt records {prompt | messages, category, ...} (required); `align eval "
        "gsb` also takes 'tiny': the tiny world's held-out prompts. Other columns (e.g. "
        "reference) reach the reward functions.",
        None,
    )
    rewards: list[RewardSpec] = _help(
        "Reward sources of the reward judge (entries as align ppo's rewards; or written short: "
        "a reward model directory, a YAML file of entries, tiny for the tiny world's rule, "
        "...); required unless llm_judge is given.",
        factory=list,
    )
    margin: float = _help("Reward judge: a score difference within margin is 'same'.", 0.0, ge=0)
    judge: Literal["reward", "llm"] | None = _help(
        "reward (score both answers with the rewards) or llm (llm_judge); none = llm when "
        "llm_judge is given, else reward.",
        None,
    )
    llm_judge: LLMJudgeConfig | None = _help(
        "The chat model behind an OpenAI-compatible API that judges (judge: llm).", None
    )
    max_new_tokens: int = _help(
        "Answer length cap (1024 as align ppo's: a 7B model's answers are judged whole, not "
        "cut off).",
        1024,
        ge=1,
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = _help(
        "Dtype both policies are loaded in (float32, bfloat16, float16); none = each "
        "checkpoint's own (its config.json).",
        None,
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = _help(
        "Attention kernel of both policies (eager, sdpa, flash_attention_2); none = "
        "transformers' choice for the model.",
        None,
    )
    temperature: float = _help("Sampling temperature of both policies (0 = greedy).", 0.0, ge=0)
    batch_size: int = _help("Prompts per generate call.", 32, ge=1)
    limit: int | None = _help("Use only the first N prompts of each category.", None, ge=1)
    n_boot: int = _help("Bootstrap resamples for the intervals.", 2000, ge=1)
    confidence: float = _help("Interval coverage.", 0.95, gt=0, lt=1)
    seed: int = _help("Seed of sampling and of the bootstrap.", 0, ge=0)
    out: str = _help(
        "Run directory for answers.jsonl, gsb.json, plots/gsb.png, report.md.", "runs/eval-gsb"
    )
    report_to: list[str] = report_to_field()
    project: str = project_field()
    run_name: str | None = run_name_field()

    def __post_init__(self) -> None:
        if not self.candidate:
            raise ValueError("candidate: required")
        check_ranges(self)
        self.report_to = check_report_to(self.report_to)
        if self.judge == "llm" and self.llm_judge is None:
            raise ValueError("judge: llm needs llm_judge.base_url and llm_judge.model")
        if self.judge == "reward" and self.llm_judge is not None:
            raise ValueError("judge: reward, but llm_judge is given (leave one out)")
        self.rewards = as_specs(self.rewards)  # entries given in code as mappings


@dataclass
class Comparison:
    """Everything one GSB comparison produced."""

    report: GSBReport
    verdicts: list[str | None]
    records: list[dict]


def compare(
    judge: Judge,
    prompts: Sequence,
    candidate: Sequence[str],
    baseline: Sequence[str],
    categories: Sequence[str],
    columns: dict[str, Sequence] | None = None,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Judge candidate against baseline answers and summarise per category and overall."""
    columns = dict(columns or {})
    verdicts = judge.judge(prompts, candidate, baseline, categories, **columns)
    report = summarize(verdicts, categories, n_boot=n_boot, confidence=confidence, seed=seed)
    records = [
        {"prompt": p, "category": c, "candidate": a, "baseline": b, "verdict": v}
        for p, c, a, b, v in zip(prompts, categories, candidate, baseline, verdicts)
    ]
    return Comparison(report, verdicts, records)


def build_judge(cfg: GSBConfig) -> Judge:
    if cfg.llm_judge is None:
        return RewardJudge.from_config(cfg.rewards, cfg.margin)
    return LLMJudge.from_config(cfg.llm_judge)


def load_prompt_records(cfg: GSBConfig) -> list[dict]:
    """The prompt records, the first ``limit`` of each category; ValueError naming the file
    when it has none."""
    records, seen = [], {}
    for row in load_records(cfg.prompts, "prompts"):
        seen[row["category"]] = seen.get(row["category"], 0) + 1
        if cfg.limit is None or seen[row["category"]] <= cfg.limit:
            records.append({k: v for k, v in row.items() if v is not None})
    if not records:
        raise ValueError(f"prompts: {cfg.prompts} has no prompt records (the file is empty)")
    return records


def _columns(records: list[dict]) -> dict[str, list]:
    """Columns every record has, besides the prompt and category (e.g. ``reference``)."""
    names = set.intersection(*(set(r) for r in records)) - _NOT_COLUMNS if records else set()
    return {n: [r[n] for r in records] for n in sorted(names)}


def load_policy(
    path: str,
    field: str = "policy",
    dtype: str | None = None,
    attn_implementation: str | None = None,
):
    """``(model, tokenizer)`` from a policy directory (safetensors only, no remote code); a bad
    directory is one line naming ``field`` (the option it came from). ``dtype`` /
    ``attn_implementation``: none = the checkpoint's dtype / transformers' choice."""
    # lazy: transformers' Auto classes (~2 s) stay off 'align eval gsb --help'
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_dir(path, field)
    tokenizer = AutoTokenizer.from_pretrained(path)
    options = load_options(dtype, attn_implementation)
    model = load_pretrained(AutoModelForCausalLM, path, field, **options).eval()
    return model, tokenizer


#: What each input is, named in the error when one is missing (every run has a model path).
EXPECTED_INPUTS = {
    "baseline": "a baseline policy directory ('tiny' on the command line: the tiny world's "
    "SFT policy)",
    "prompts": "held-out prompt records {prompt | messages, category} ('tiny' on the command "
    "line: the tiny world's)",
    "rewards": f"{REWARDS_EXPECTED}, or llm_judge",
}


def check_inputs(cfg: GSBConfig) -> None:
    """The candidate is a model path, so nothing is filled in: a baseline, prompts and a judge
    (rewards or llm_judge) are required; one line naming the first one missing."""
    empty = {
        "baseline": cfg.baseline is None,
        "prompts": cfg.prompts is None,
        "rewards": not cfg.rewards and cfg.llm_judge is None,
    }
    missing = [(name, EXPECTED_INPUTS[name]) for name, is_empty in empty.items() if is_empty]
    if missing:
        raise missing_inputs_error(("candidate", cfg.candidate), missing)


def check_paths(cfg: GSBConfig) -> None:
    """Before any model loads: ``out`` takes writes and both policies are model directories
    with safetensors weights (one line naming the field otherwise)."""
    check_output_dir(cfg.out, "out")
    for name in ("candidate", "baseline"):
        check_model_dir(getattr(cfg, name), name)


def run_gsb(cfg: GSBConfig, on_batch: Callable[[int], None] | None = None) -> Comparison:
    """Generate both policies' answers, judge, and write the report into ``cfg.out``."""
    from eval.report import gsb_section, write_report  # lazy: eval.report loads matplotlib

    check_inputs(cfg)
    check_paths(cfg)
    judge = build_judge(cfg)
    records = load_prompt_records(cfg)
    sampling = SamplingParams(cfg.max_new_tokens, cfg.temperature, seed=cfg.seed)
    answers = {}
    for side, path in (("candidate", cfg.candidate), ("baseline", cfg.baseline)):
        model, tokenizer = load_policy(path, side, cfg.dtype, cfg.attn_implementation)
        answers[side] = generate_answers(
            model, tokenizer, records, sampling, batch_size=cfg.batch_size, on_batch=on_batch
        )
    prompts = [r.get("messages") or r["prompt"] for r in records]
    result = compare(
        judge,
        prompts,
        answers["candidate"],
        answers["baseline"],
        [r["category"] for r in records],
        _columns(records),
        n_boot=cfg.n_boot,
        confidence=cfg.confidence,
        seed=cfg.seed,
    )
    out = Path(cfg.out)
    write_jsonl(result.records, out / "answers.jsonl")
    section = gsb_section(result.report, out, extra={"config": asdict(cfg)})
    write_report(out, [section], title=f"GSB: {cfg.candidate} vs {cfg.baseline}")
    report_to_trackers(cfg, result)
    return result


#: Answer pairs shown in the trackers' table of sample answers.
TRACKER_SAMPLES = 32


def report_to_trackers(cfg: GSBConfig, result: Comparison) -> None:
    """Rates per category (``gsb/<category>/<rate>``, step 0) and a table of the first answer
    pairs with their verdicts, to the trackers of ``cfg.report_to``."""
    if not cfg.report_to:
        return
    tracker = Tracker.start(cfg.report_to, cfg.out, cfg.project, cfg.run_name, asdict(cfg))
    scalars = {}
    for row in [*result.report.rows, result.report.overall]:
        scalars.update({f"gsb/{row.category}/{k}": v for k, v in row.rates.items()})
    tracker.log(scalars, step=0)
    tracker.log_samples(result.records[:TRACKER_SAMPLES], step=0)
    tracker.finish()
