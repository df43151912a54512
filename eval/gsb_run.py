"""A GSB comparison end to end: answers of two policies → a judge → rates → report.

:func:`compare` is the step PEI calls each round (answers already generated);
:func:`run_gsb` loads policies and prompts from a :class:`GSBConfig` (``align eval gsb``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from align.core.config import help_field as _help
from eval.gsb import GSBReport, summarize
from eval.judges import Judge, RewardJudge

TINY_REWARD = "align.tiny.reward:tiny_world_reward"
JUDGES = ("reward", "llm")
_NOT_COLUMNS = {"prompt", "messages", "category", "id"}


@dataclass
class GSBConfig:
    """``align eval gsb``: a candidate policy against a baseline on held-out prompts."""

    candidate: str = _help("Candidate policy directory (HF format).", "")
    baseline: str = _help(
        "Baseline policy directory (`align eval gsb` defaults to the tiny world's SFT policy).", ""
    )
    prompts: str = _help(
        "Held-out prompt records {prompt | messages, category, ...} (`align eval gsb` defaults "
        "to the tiny world's eval prompts). Other columns (e.g. reference) reach the reward "
        "functions.",
        "",
    )
    judge: str = _help(
        "reward (score both answers) or llm (an OpenAI-compatible chat API).", "reward"
    )
    rewards: list[dict] = field(
        default_factory=lambda: [{"type": "python", "fn": TINY_REWARD}],
        metadata={"help": "Reward sources of the reward judge, as PPO's rewards: entries."},
    )
    margin: float = _help("Reward judge: a score difference within margin is 'same'.", 0.0)
    llm_base_url: str = _help("LLM judge: base URL, e.g. http://127.0.0.1:8000/v1.", "")
    llm_model: str = _help("LLM judge: model name sent to the API.", "")
    api_key_env: str | None = _help("LLM judge: environment variable holding the API key.", None)
    max_new_tokens: int = _help("Answer length cap.", 128)
    temperature: float = _help("Sampling temperature of both policies (0 = greedy).", 0.0)
    batch_size: int = _help("Prompts per generate call.", 32)
    limit: int | None = _help("Use only the first N prompts of each category.", None)
    n_boot: int = _help("Bootstrap resamples for the intervals.", 2000)
    confidence: float = _help("Interval coverage.", 0.95)
    seed: int = _help("Seed of sampling and of the bootstrap.", 0)
    out: str = _help(
        "Run directory for answers.jsonl, gsb.json, plots/gsb.png, report.md.", "runs/eval-gsb"
    )

    def __post_init__(self) -> None:
        for name in ("candidate", "baseline", "prompts"):
            if not getattr(self, name):
                raise ValueError(f"{name}: required")
        if self.judge not in JUDGES:
            raise ValueError(f"judge: expected one of {JUDGES}, got {self.judge!r}")
        if self.judge == "llm" and not (self.llm_base_url and self.llm_model):
            raise ValueError("judge llm: set llm_base_url and llm_model")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: expected >= 1 or None, got {self.limit}")
        if self.margin < 0:
            raise ValueError(f"margin: expected >= 0, got {self.margin}")


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
    if cfg.judge == "reward":
        return RewardJudge.from_config(cfg.rewards, cfg.margin)
    from eval.llm_judge import LLMJudge

    return LLMJudge(cfg.llm_base_url, cfg.llm_model, cfg.api_key_env or None)


def load_prompt_records(cfg: GSBConfig) -> list[dict]:
    """The prompt records, the first ``limit`` of each category."""
    from align.core.data import load_records

    records, seen = [], {}
    for row in load_records(cfg.prompts, "prompts"):
        seen[row["category"]] = seen.get(row["category"], 0) + 1
        if cfg.limit is None or seen[row["category"]] <= cfg.limit:
            records.append({k: v for k, v in row.items() if v is not None})
    return records


def _columns(records: list[dict]) -> dict[str, list]:
    """Columns every record has, besides the prompt and category (e.g. ``reference``)."""
    names = set.intersection(*(set(r) for r in records)) - _NOT_COLUMNS if records else set()
    return {n: [r[n] for r in records] for n in sorted(names)}


def load_policy(path: str):
    """``(model, tokenizer)`` from a policy directory (safetensors only, no remote code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no such policy directory")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()
    return model, tokenizer


def run_gsb(cfg: GSBConfig, on_batch: Callable[[int], None] | None = None) -> Comparison:
    """Generate both policies' answers, judge, and write the report into ``cfg.out``."""
    from align.core.data import write_jsonl
    from eval.generation import generate_answers
    from eval.report import gsb_section, write_report
    from rollouts.base import SamplingParams

    judge = build_judge(cfg)
    records = load_prompt_records(cfg)
    sampling = SamplingParams(cfg.max_new_tokens, cfg.temperature, seed=cfg.seed)
    answers = {}
    for side, path in (("candidate", cfg.candidate), ("baseline", cfg.baseline)):
        model, tokenizer = load_policy(path)
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
    return result
