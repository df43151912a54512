"""``align data synth``: ensemble answer synthesis for SFT data.

Several policies answer each prompt ``n`` times; the reward sources (``rewards:``, as in
``align ppo``) score every answer; the top ``k`` answers per prompt at or above ``min_score``
become SFT records (the prompt's turns + the answer as the assistant turn) with provenance
(``model``, ``score``, ``rank``, ``sample``, ``prompt_index``).

**Outputs** (in ``out``): ``results.jsonl`` (one line per prompt: every answer and its score,
appended as each batch is scored), ``sft.jsonl`` (the kept records), ``report.json`` (per category
and per model: prompts, answers generated, kept, dropped below the floor, invalid, beyond top k)
and ``run.json`` (the settings the results belong to).

**Resumption.** Prompts are cut, in input order, into batches of ``batch_size``; policy ``m``
samples batch ``b`` in one engine call seeded with ``hash(seed, m, b)``, so every answer depends
only on the arguments, never on what ran before. A batch's lines are appended in one write,
flushed and fsynced; a rerun skips the prompts already in ``results.jsonl`` (a torn last line,
a killed run's, is cut off). A killed and resumed run thus writes exactly the bytes of an
uninterrupted one. ``run.json`` guards against resuming with other settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from align.core.config import check_ranges, config_to_dict
from align.core.config import help_field as _help
from align.core.data import load_records, messages_of
from align.core.io import atomic_write_json, atomic_write_text, read_jsonl
from align.core.outputs import check_output_dir
from rm.spec import RewardSpec, as_specs
from rollouts.base import SamplingParams


@dataclass
class SynthConfig:
    """Ensemble answer synthesis: policies answer, reward sources keep the top k per prompt."""

    prompts: str = field(
        metadata={"help": "Prompt records {prompt | messages, category} (JSONL/Parquet/CSV/dir)."}
    )
    out: str = field(
        metadata={
            "help": "Output folder: sft.jsonl, report.json, results.jsonl (the resume log), "
            "run.json."
        }
    )
    policies: list[str] = _help(
        "Policy folders that answer (repeat --policies or give several); each answers every "
        "prompt n times.",
        factory=list,
    )
    rewards: list[RewardSpec] = _help(
        "Reward sources as in align ppo (tiny, rule:NAME, a reward model folder, a URL, "
        "module:function); repeat to sum several. An answer a source cannot score is dropped.",
        factory=list,
    )
    default_category: str | None = _help(
        "Category of prompt records that carry none (none: every record must carry one).", None
    )
    n: int = _help("Answers per prompt per policy.", 4, ge=1)
    k: int = _help("Answers kept per prompt at most (the best-scored).", 1, ge=1)
    min_score: float | None = _help(
        "Score floor: answers scored below it are dropped (none: no floor).", None
    )
    max_new_tokens: int = _help("Answer length limit.", 256, ge=1)
    max_prompt_length: int = _help("Longer prompts are left-truncated.", 1024, ge=1)
    temperature: float = _help("Sampling temperature.", 0.8, gt=0)
    top_p: float = _help("Nucleus sampling.", 0.95, gt=0, le=1)
    seed: int = _help("Seed; policy m samples batch b with a seed derived from (seed, m, b).", 0,
                      ge=0)  # fmt: skip
    chat_format: str = _help("Chat format prompts are rendered with.", "hf")
    batch_size: int = _help(
        "Prompts per engine call; each batch's results are written when every policy has "
        "answered it, so a killed run loses at most one batch. Part of the seed: changing it "
        "changes the answers.",
        8,
        ge=1,
    )

    config_name: ClassVar[str] = "synth"

    def __post_init__(self) -> None:
        check_ranges(self)
        self.rewards = as_specs(self.rewards)
        self.policies = list(self.policies)
        twice = sorted({p for p in self.policies if self.policies.count(p) > 1})
        if twice:  # provenance and the per-model report name policies by their path
            raise ValueError(f"policies: {twice[0]} given twice (copy it to another folder)")


def check_inputs(cfg: SynthConfig) -> None:
    """Policies and rewards are required: one line naming the first one missing."""
    if not cfg.policies:
        raise ValueError("policies: required (one or more policy folders)")
    if not cfg.rewards:
        raise ValueError("rewards: required (e.g. --rewards tiny)")


# ------------------------------------------------------------------ selection (pure)


@dataclass
class Selection:
    """What :func:`select_top_k` kept: ``kept`` indices best first; the dropped counts."""

    kept: list[int]
    below_floor: list[int]
    invalid: list[int]
    beyond_k: list[int]


def select_top_k(scores: Sequence[float | None], k: int, min_score: float | None) -> Selection:
    """The ``k`` best of ``scores`` at or above ``min_score``; ``None`` = invalid (never kept).

    Ties keep the earlier answer first (a stable sort), so the choice is deterministic.
    """
    invalid = [i for i, s in enumerate(scores) if s is None]
    valid = [i for i, s in enumerate(scores) if s is not None]
    below = [i for i in valid if min_score is not None and scores[i] < min_score]
    eligible = sorted((i for i in valid if i not in set(below)), key=lambda i: -scores[i])
    return Selection(eligible[:k], below, invalid, sorted(eligible[k:]))


# ------------------------------------------------------------------ run settings and resume log


def batch_seed(seed: int, model: int, batch: int) -> int:
    """The sampling seed of policy ``model`` on batch ``batch`` (fits in 63 bits)."""
    digest = hashlib.sha256(f"{seed}:{model}:{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _policy_fingerprint(policy: str) -> list:
    files = sorted(f for f in Path(policy).rglob("*") if f.is_file())
    return [[str(f.relative_to(policy)), f.stat().st_size] for f in files]


def run_settings(cfg: SynthConfig, records: list[dict]) -> dict:
    """Everything that determines the answers and scores (``run.json``)."""
    prompts = json.dumps(records, sort_keys=True, ensure_ascii=False, default=str)
    return {
        "prompts_sha256": hashlib.sha256(prompts.encode()).hexdigest(),
        "policies": {p: _policy_fingerprint(p) for p in cfg.policies},
        "rewards": [config_to_dict(r) for r in cfg.rewards],
        **{
            name: getattr(cfg, name)
            for name in (
                "n",
                "max_new_tokens",
                "max_prompt_length",
                "temperature",
                "top_p",
                "seed",
                "chat_format",
                "batch_size",
            )  # fmt: skip
        },
    }


def _check_resumable(out: Path, settings: dict) -> None:
    """A results log from other settings: one line (resuming would mix two runs)."""
    path = out / "run.json"
    if path.is_file() and json.loads(path.read_text()) != settings:
        raise ValueError(
            f"out: {out} holds a run with other settings (run.json); give another --out or "
            "delete it"
        )
    atomic_write_json(path, settings)


def _append_lines(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` in one write, flushed and fsynced (a kill tears at most the last line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------ sampling and scoring


class _Policy:
    """One policy: its tokenizer, its engine and how prompts are encoded for it."""

    def __init__(self, path: str, cfg: SynthConfig) -> None:
        # lazy: transformers and torch load only to generate (keeps 'align --help' fast)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from align.core.chat_formats import get_chat_format
        from align.core.models import load_pretrained
        from rollouts.hf_generate import GenerateEngine

        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = load_pretrained(AutoModelForCausalLM, path, "policies").eval()
        self.engine = GenerateEngine.from_tokenizer(model, self.tokenizer)
        self.chat_format = get_chat_format(cfg.chat_format)
        self.max_prompt_length = cfg.max_prompt_length

    def answer(self, records: list[dict], sampling: SamplingParams, n: int):
        """``(texts [P·n], RolloutBatch)``: n answers per record, prompt-major."""
        encode = self.chat_format.encode_prompt
        ids = [encode(messages_of(r), self.tokenizer, self.max_prompt_length)[0] for r in records]
        out = self.engine.generate(ids, sampling, n)
        return self.tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True), out


def _score(rewards: list, records: list[dict], texts: list[str], out, n: int) -> list:
    """Scores ``[P·n]`` (None where a source could not score the answer)."""
    from rm.functions import reward_inputs, score_rewards  # lazy: loads transformers

    prompts, columns = reward_inputs([r for r in records for _ in range(n)])
    columns.update(prompt_ids=out.prompt_ids, completion_ids=out.completion_ids)
    scored = score_rewards(rewards, prompts, texts, columns)
    return [t if ok else None for t, ok in zip(scored.total.tolist(), scored.kept.tolist())]


def answer_batch(
    cfg: SynthConfig, policies: list[_Policy], rewards: list, batch: int, start: int,
    records: list[dict],
) -> list[dict]:  # fmt: skip
    """Result lines of one batch: ``{index, category, answers: [{model, sample, text, score}]}``."""
    rows = [
        {"index": start + i, "category": r["category"], "answers": []}
        for i, r in enumerate(records)
    ]
    for m, policy in enumerate(policies):
        sampling = SamplingParams(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=batch_seed(cfg.seed, m, batch),
        )
        texts, out = policy.answer(records, sampling, cfg.n)
        scores = _score(rewards, records, texts, out, cfg.n)
        for i, row in enumerate(rows):
            for j in range(cfg.n):
                row["answers"].append(
                    {
                        "model": policy.path,
                        "sample": j,
                        "text": texts[i * cfg.n + j],
                        "score": scores[i * cfg.n + j],
                    }  # fmt: skip
                )
    return rows


# ------------------------------------------------------------------ records and report


def _empty_counts() -> dict:
    return {"generated": 0, "kept": 0, "below_floor": 0, "invalid": 0, "beyond_k": 0}


def select_records(cfg: SynthConfig, records: list[dict], results: list[dict]):
    """``(sft records, report)`` from the result lines (one per prompt, in prompt order)."""
    sft, per_category = [], {}
    for row in results:
        record = records[row["index"]]
        answers = row["answers"]
        chosen = select_top_k([a["score"] for a in answers], cfg.k, cfg.min_score)
        cat = per_category.setdefault(
            row["category"], {"prompts": 0, **_empty_counts(), "per_model": {}}
        )
        cat["prompts"] += 1
        for kind in ("kept", "below_floor", "invalid", "beyond_k"):
            for i in getattr(chosen, kind):
                model = cat["per_model"].setdefault(answers[i]["model"], _empty_counts())
                for counts in (cat, model):
                    counts[kind] += 1
                    counts["generated"] += 1
        for rank, i in enumerate(chosen.kept, start=1):
            a = answers[i]
            sft.append({
                "messages": [*messages_of(record), {"role": "assistant", "content": a["text"]}],
                "category": row["category"],
                "provenance": {"model": a["model"], "score": a["score"], "rank": rank,
                               "sample": a["sample"], "prompt_index": row["index"]},
            })  # fmt: skip
    total = {"prompts": sum(c["prompts"] for c in per_category.values())}
    for kind in _empty_counts():
        total[kind] = sum(c[kind] for c in per_category.values())
    return sft, {"per_category": per_category, "total": total}


def load_prompts(cfg: SynthConfig) -> list[dict]:
    """The prompt records; an empty file is one line (ValueError)."""
    records = load_records(cfg.prompts, "prompts", cfg.default_category).to_list()
    if not records:
        raise ValueError(f"prompts: {cfg.prompts} has no prompts (the file is empty)")
    return records


def run_synth(cfg: SynthConfig, progress: Callable[[int, int], None] = lambda d, n: None) -> dict:
    """Answer, score, select; write the outputs in ``cfg.out``; returns the report."""
    from rm.functions import rewards_from_config  # lazy: loads transformers

    check_inputs(cfg)
    records = load_prompts(cfg)
    out = check_output_dir(cfg.out, "out")
    out.mkdir(parents=True, exist_ok=True)
    _check_resumable(out, run_settings(cfg, records))
    log = out / "results.jsonl"
    done = {row["index"]: row for row in read_jsonl(log, repair=True)} if log.exists() else {}
    progress(len(done), len(records))
    if len(done) < len(records):
        policies = [_Policy(p, cfg) for p in cfg.policies]
        rewards = rewards_from_config(cfg.rewards, on_invalid="drop")
        for b, start in enumerate(range(0, len(records), cfg.batch_size)):
            part = records[start : start + cfg.batch_size]
            if all(start + i in done for i in range(len(part))):
                continue
            rows = answer_batch(cfg, policies, rewards, b, start, part)
            rows = [r for r in rows if r["index"] not in done]  # a torn batch: the rest only
            _append_lines(log, rows)
            done.update((r["index"], r) for r in rows)
            progress(len(done), len(records))
    sft, report = select_records(cfg, records, [done[i] for i in range(len(records))])
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sft)
    atomic_write_text(out / "sft.jsonl", text)
    atomic_write_json(out / "report.json", report)
    return report


__all__ = ["SynthConfig", "run_synth", "select_records", "select_top_k"]
