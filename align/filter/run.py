"""``align filter``: sample ``n`` answers per prompt, score them, keep the informative prompts.

Orchestration around :mod:`align.filter.selection` (the statistics): load prompts,
sample through any
:class:`~rollouts.base.RolloutEngine` in batches, score with any reward source
(:mod:`rm.functions`), append every scored batch to a cache, select, write the kept prompts and a
report (``report.md``, ``summary.json``, ``mu.png``, ``sigma.png``).

**Cache and resumption.** Prompts are cut, in input order, into batches of ``batch_size`` (16 by
default: small groups, so a kill loses at most one engine call's work); batch ``b`` is one engine
call, sampled with the seed ``seed·1_000_003 + b`` (the engine seeds once per call), so a batch's
samples depend only on the arguments and the batch index (a batch is the smallest unit that can
be cached: an engine's answers to a prompt depend on the rest of its call). Each scored batch is
appended to ``<cache_dir>/<key>.jsonl`` as soon as its call returns (one line per prompt,
flushed and fsynced per batch); ``key``
hashes everything that determines the samples (prompts, policy files, reward sources, sampling,
``n``, ``seed``, ``batch_size``, chat format, engine, ``cache_tag``). A rerun with the same
arguments skips the cached batches, so a killed run resumes and ends with exactly the result of
an uninterrupted one. A torn last line (killed mid-write) is discarded.

**Bad input.** ``n < 2``: error (std with ddof 1 is undefined). An empty prompt file: error. A
prompt without ``category``: the loader's error naming file, row and field. A sample the reward
source scores None/NaN/inf: its prompt is dropped and counted (``scored`` step of the report);
reward entries without ``on_invalid`` drop here for that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from align.core.config import build, check_ranges, config_to_dict, missing_inputs_error
from align.core.config import help_field as _help
from align.core.data import load_records, messages_of, write_jsonl
from align.core.io import read_jsonl
from align.core.models import check_model_dir, load_options, load_pretrained
from align.core.outputs import check_output_dir, check_output_file
from align.core.pref_data import financeiq_prompt
from align.core.score_rules import check_rule_fields, load_calibration
from align.core.tracking import (
    Tracker,
    check_report_to,
    project_field,
    report_to_field,
    run_name_field,
)
from align.filter import selection as F
from align.filter.report import rule_text, write_report
from align.tiny.build import build_tiny_world
from rm.spec import REWARDS_EXPECTED, RewardSpec, as_specs, tiny_rule
from rollouts.base import SamplingParams
from rollouts.config import RolloutConfig

#: Old spellings of FilterConfig fields, still read (with a warning, once each).
OLD_SPELLINGS = {"engine": "rollout.engine", "reward": "rewards", "cache": "use_cache"}
DEFAULT_STD_QUANTILE = 0.2  # [P] std >= 20th percentile of the pool
DEFAULT_MEAN_QUANTILES = (0.1, 0.9)  # [P] mean within the 10th-90th percentiles


@dataclass
class FilterConfig:
    """Confidence-interval filtering of prompts (docs/methods.md §3). ``[S]`` marks values the
    XuanYuan reports state; the others are our defaults."""

    prompts: str | None = _help(
        "Prompt records (JSONL/Parquet/CSV/dir) or FinanceIQ MCQ CSVs (a file or a folder of "
        "*.csv: each question becomes its zero-shot prompt, category = exam); required with a "
        "policy; none without one = the tiny world's RL prompts.",
        None,
    )
    default_category: str | None = _help(
        "Category of prompt records that carry none (none: every record must carry one).", None
    )
    policy: str | None = _help(
        "Policy that samples the answers. None = the tiny world's SFT policy, and the tiny "
        "world fills in prompts and rewards left empty; once a policy is given, prompts and "
        "rewards are required.",
        None,
    )
    rewards: list[RewardSpec] = _help(
        "Reward sources as in align ppo (entries: see rewards[] below; or written short: a "
        "reward model directory, an http(s) URL, module:function, file.py:function, tiny, mcq, "
        "rule:NAME); repeat --rewards to sum several. An entry without on_invalid drops "
        "(the prompt is dropped and counted). Required with a policy; empty without one = the "
        "tiny world's rule.",
        factory=list,
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = _help(
        "Dtype the policy is loaded in (float32, bfloat16, float16): by the hf engine, and by "
        "vLLM when rollout.vllm.dtype is auto; none = the checkpoint's own (its config.json). "
        "Score statistics are float64 whatever it is.",
        None,
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = _help(
        "Attention kernel of the policy the hf engine loads (eager, sdpa, flash_attention_2); "
        "none = transformers' choice for the model.",
        None,
    )
    rollout: RolloutConfig = _help(
        "Rollout engine and its options (hf, vllm, vllm-server), as in align ppo.",
        factory=RolloutConfig,
    )
    chat_format: str = _help("Chat format prompts are rendered with.", "hf")
    n: int = _help("Answers sampled per prompt [S: 8]; >= 2 (std with ddof 1).", 8, ge=2)
    temperature: float = _help("Sampling temperature (as PPO samples).", 0.7, gt=0)
    top_p: float = _help("Nucleus sampling.", 0.9, gt=0, le=1)
    top_k: int = _help("Top-k sampling (0 = off).", 0, ge=0)
    max_new_tokens: int = _help(
        "Answer length limit; 1024 as PPO's (sample the answers PPO will sample); the tiny "
        "config sets 48.",
        1024,
        ge=1,
    )
    max_prompt_length: int = _help(
        "Longer prompts are left-truncated (and counted); 1024 as PPO's; the tiny config sets "
        "256.",
        1024,
        ge=1,
    )
    batch_size: int = _help(
        "Prompts per engine call (each sampled n times); each call's scores are cached when it "
        "returns, so a killed run loses at most one call. Larger: faster engines, more to redo.",
        16,
        ge=1,
    )
    std_min: float | None = _help("Drop prompts with score std below this.", None, ge=0)
    std_quantile: float | None = _help(
        "Drop prompts with std below this quantile of the pool [P: 0.2]; default when neither "
        "std_min nor std_quantile is given.",
        None,
        ge=0,
        le=1,
    )
    mean_range: tuple[float, float] | None = _help("Keep prompts with lo <= mean <= hi.", None)
    mean_quantiles: tuple[float, float] | None = _help(
        "Keep prompts whose mean lies within these quantiles of the pool [P: 0.1, 0.9]; "
        "default when no mean filter is given.",
        None,
    )
    calibration: str | None = _help(
        "JSON of `align rm eval --out`: keep means in the score bins at least as accurate as "
        "overall (scores must be on that evaluation's scale).",
        None,
    )
    keep: int | None = _help(
        "Prompts to keep; none = every survivor (still sorted by std).", None, ge=1
    )
    drop_zero_std: bool = _help(
        "Also drop prompts whose n scores are all equal (σ = 0), whatever the floor.", True
    )
    alpha: float = _help("Sampling weight = std^alpha [P: 1].", 1.0, ge=0)
    seed: int = _help("Seed of the sampling and of the weighted selection.", 0, ge=0)
    out: str = _help(
        "Kept prompts (JSONL): the input fields + score_mean, score_std.", "kept.jsonl"
    )
    report_dir: str | None = _help("Report folder; none = <out without suffix>_report.", None)
    cache_dir: str | None = _help("Cache folder; none = <report_dir>/cache.", None)
    use_cache: bool = _help("Append scored samples to the cache and resume from it.", True)
    cache_tag: str = _help(
        "Extra text in the cache key (a caller passing its own engine names its weights here).", ""
    )
    report_to: list[str] = report_to_field()
    project: str = project_field()
    run_name: str | None = run_name_field()

    config_name: ClassVar[str] = "filter"  # --config tiny → align/configs/filter_tiny.yaml
    #: The shipped config a command line with no policy and no --config starts from.
    config_tiny_base: ClassVar[str] = "tiny"
    config_renames: ClassVar[dict[str, str]] = OLD_SPELLINGS
    config_removed: ClassVar[dict[str, str]] = {
        "engine_options": "no longer a field; set rollout.vllm.<option>, "
        "rollout.server.<option> or rollout.hf.batch_size (see `align filter --help`)"
    }

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"n: expected >= 2 samples per prompt (std undefined), got {self.n}")
        if self.temperature <= 0:
            raise ValueError(
                f"temperature: expected > 0 (n greedy answers are identical), got "
                f"{self.temperature}"
            )
        check_ranges(self)
        self.report_to = check_report_to(self.report_to)
        self.rewards = as_specs(self.rewards)  # entries given in code as mappings
        if not self.rewards and self.uses_tiny_world():
            self.rewards = tiny_rule()  # empty = not given; a run with a policy requires them
        if isinstance(self.rollout, Mapping):  # given in code as a mapping
            self.rollout = build(RolloutConfig, self.rollout, "rollout")
        check_rule_fields(self)  # shared with PPO's online filter

    def uses_tiny_world(self) -> bool:
        """No policy given: the tiny world fills in the inputs left empty. Once one is given,
        prompts and rewards are the user's to give (no toy fallback)."""
        return self.policy is None

    @property
    def std_rule(self) -> dict:
        """The std floor to apply: ``std_min``, else ``std_quantile``, else the 0.2 quantile."""
        if self.std_min is not None:
            return {"std_min": self.std_min}
        return {
            "std_quantile": DEFAULT_STD_QUANTILE if self.std_quantile is None else self.std_quantile
        }

    @property
    def mean_rule(self) -> dict:
        """The mean filter to apply; the 10th–90th percentiles when none is given."""
        for name in ("mean_range", "mean_quantiles", "calibration"):
            if getattr(self, name) is not None:
                return {name: getattr(self, name)}
        return {"mean_quantiles": DEFAULT_MEAN_QUANTILES}

    @property
    def report_path(self) -> Path:
        out = Path(self.out)
        return Path(self.report_dir) if self.report_dir else out.with_name(f"{out.stem}_report")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else self.report_path / "cache"


@dataclass
class FilterResult:
    """What :func:`run_filter` did.

    ``kept``: the kept records (input fields + ``score_mean``, ``score_std``), σ descending.
    ``counts[step][category]``: survivors after each step of :data:`align.filter.selection.STEPS`.
    ``generated`` / ``cached``: prompts sampled in this run / read from the cache;
    ``generated_tokens``: completion tokens sampled in this run; ``timing``: ``generate_s``,
    ``score_s``, ``total_s`` and ``prompts_per_s`` (generated prompts / total_s).
    """

    kept: list[dict]
    counts: dict[str, dict[str, int]]
    thresholds: dict
    quotas: dict[str, int]
    final_quotas: dict[str, int]
    shortfall: dict[str, int]
    n_prompts: int
    generated: int
    cached: int
    truncated_prompts: int
    generated_tokens: int
    timing: dict[str, float]
    out: Path
    report_dir: Path

    @property
    def kept_share(self) -> dict[str, float]:
        """Kept / input per category."""
        return {
            c: (self.counts["kept"][c] / n if n else 0.0) for c, n in self.counts["input"].items()
        }


# ------------------------------------------------------------------ prompts


def _mcq_csvs(path: Path) -> list[Path]:
    """FinanceIQ-layout CSVs at ``path`` (a file or a folder), or [] when it is not that."""
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files or any(f.suffix != ".csv" for f in files):
        return []
    with open(files[0], encoding="utf-8-sig") as f:
        header = f.readline().strip().split(",")
    return files if {"Question", "Answer"} <= set(header) else []


def _financeiq_prompts(files: list[Path]) -> list[dict]:
    out = []
    for path in files:
        for i, row in enumerate(load_records(path, "mcq")):
            out.append(
                {
                    "id": f"{path.stem}-{i}",
                    "prompt": financeiq_prompt(row),
                    "category": row["category"],
                    "answer": row["Answer"],
                }
            )
    return out


def load_prompt_records(
    path: str | os.PathLike[str], default_category: str | None = None
) -> list[dict]:
    """Prompt records from ``path``: ``prompts`` records, or FinanceIQ MCQs turned into their
    zero-shot prompts (with an ``answer`` column for the ``mcq`` rule). Empty → ValueError."""
    p = Path(path)
    files = _mcq_csvs(p) if p.exists() else []
    if files:
        records = _financeiq_prompts(files)
    else:
        records = load_records(p, "prompts", default_category).to_list()
    if not records:
        raise ValueError(f"{path}: no prompts (the file is empty)")
    return records


def prompt_key(index: int, record: dict) -> str:
    """The cache key of one prompt: its position and a hash of its content."""
    digest = hashlib.sha1(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
    return f"{index}:{digest.hexdigest()[:16]}"


# ------------------------------------------------------------------ cache


def _policy_fingerprint(policy: str | None) -> list:
    """Name, size and mtime of every file of the policy folder (changes when weights change)."""
    if policy is None or not Path(policy).is_dir():
        return [policy]
    files = sorted(f for f in Path(policy).rglob("*") if f.is_file())
    return [[str(f.relative_to(policy)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def cache_key(cfg: FilterConfig, keys: Sequence[str], reward_names: list[str] | None = None) -> str:
    """Hash of every argument that determines the scored samples. ``reward_names``: the names of
    reward components given ready-made (they replace ``cfg.rewards`` in the key)."""
    determining = {
        "prompts": hashlib.sha256("\n".join(keys).encode()).hexdigest(),
        "given_rewards": reward_names,
        "policy": _policy_fingerprint(cfg.policy),
        "rewards": [config_to_dict(r) for r in cfg.rewards],
        "rollout": config_to_dict(cfg.rollout),
        **{
            name: getattr(cfg, name)
            for name in (
                "chat_format",
                "n",
                "temperature",
                "top_p",
                "top_k",
                "max_new_tokens",
                "max_prompt_length",
                "batch_size",
                "seed",
                "cache_tag",
            )
        },
    }
    # in the key only when set, so caches written before these fields existed stay valid
    for name in ("dtype", "attn_implementation"):
        if getattr(cfg, name) is not None:
            determining[name] = getattr(cfg, name)
    text = json.dumps(determining, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class SampleCache:
    """Append-only JSONL of scored prompts: ``{"key", "scores": [n] (null = invalid),
    "completions": [n]}`` per line."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: dict[str, dict] = {}
        if path is not None:  # a torn last line (a killed run's) is dropped and cut off
            self.rows = {row["key"]: row for row in read_jsonl(path, repair=True)}

    def append(self, rows: list[dict]) -> None:
        for row in rows:
            self.rows[row["key"]] = row
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())


# ------------------------------------------------------------------ models


def _tiny_world():
    return build_tiny_world()[0]


#: What each input is, named in the error when a run with a policy lacks it.
EXPECTED_INPUTS = {
    "prompts": "prompt records {prompt | messages, category} (JSONL/Parquet/CSV/dir) or "
    "FinanceIQ MCQ CSVs",
    "rewards": REWARDS_EXPECTED,
}


def check_inputs(cfg: FilterConfig, reward_given: bool = False) -> None:
    """With a policy given, ``prompts`` and (unless the caller passes a ready reward,
    ``reward_given``) ``rewards`` are required: one line naming the first one missing."""
    if cfg.uses_tiny_world():
        return
    empty = {"prompts": cfg.prompts is None, "rewards": not cfg.rewards and not reward_given}
    missing = [(name, EXPECTED_INPUTS[name]) for name, is_empty in empty.items() if is_empty]
    if missing:
        raise missing_inputs_error(("policy", cfg.policy), missing)


def resolve_defaults(cfg: FilterConfig, need_policy: bool = True) -> FilterConfig:
    """A copy of ``cfg`` with its inputs resolved. With no policy given, the tiny world fills in
    ``prompts`` where left empty and, when ``need_policy`` (no ready engine), ``policy`` (its
    rule is already the rewards: :meth:`FilterConfig.__post_init__`); with a policy given,
    nothing is filled in (:func:`check_inputs` has checked the inputs)."""
    if not cfg.uses_tiny_world() or (cfg.prompts is not None and not need_policy):
        return replace(cfg)
    world = _tiny_world()
    return replace(
        cfg,
        prompts=cfg.prompts or str(world.data("prompts")),
        policy=str(world.policy) if need_policy else None,
    )


def load_tokenizer(path: str):
    from transformers import AutoTokenizer  # lazy: transformers stays off 'align filter --help'

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_engine(cfg: FilterConfig, tokenizer):
    """The rollout engine ``cfg.rollout`` describes on ``cfg.policy``
    (:func:`rollouts.factory.engine_from_config`)."""
    from rollouts.factory import engine_from_config, engine_options  # lazy: as in load_tokenizer

    if cfg.rollout.engine == "hf":
        return engine_from_config(cfg.rollout, _load_policy(cfg), tokenizer, cfg.seed)
    changes = {}
    if cfg.dtype and engine_options(cfg.rollout, cfg.seed).get("dtype") == "auto":
        changes["dtype"] = cfg.dtype  # the dtype the hf engine would load (as in PPO)
    return engine_from_config(cfg.rollout, cfg.policy, tokenizer, cfg.seed, **changes)


def _load_policy(cfg: FilterConfig):
    """The policy with ``cfg.dtype`` and ``cfg.attn_implementation`` (safetensors only)."""
    from transformers import AutoModelForCausalLM  # lazy: as in load_tokenizer

    options = load_options(cfg.dtype, cfg.attn_implementation)  # none: transformers' choice
    return load_pretrained(AutoModelForCausalLM, cfg.policy, "policy", **options).eval()


def build_rewards(specs: list[RewardSpec]):
    """Reward components from config entries; an entry without ``on_invalid`` drops."""
    from rm.functions import rewards_from_config  # lazy: loads transformers, as in load_tokenizer

    return rewards_from_config(specs, on_invalid="drop")


def as_rewards(reward) -> list:
    """A ready reward: a list of ``WeightedReward``, one ``WeightedReward`` or a plain callable in
    TRL's convention (invalid scores drop the prompt)."""
    from rm.functions import WeightedReward  # lazy: loads transformers, as in load_tokenizer

    if isinstance(reward, WeightedReward):
        return [reward]
    if isinstance(reward, list):
        return reward
    name = getattr(reward, "__name__", type(reward).__name__)
    return [WeightedReward(name, reward, 1.0, on_invalid="drop")]


# ------------------------------------------------------------------ sampling and scoring


class _Scorer:
    """Encodes prompts, samples ``n`` answers per prompt and scores them, one batch at a time."""

    def __init__(self, cfg: FilterConfig, engine, rewards: list, tokenizer) -> None:
        from align.core.chat_formats import get_chat_format  # lazy: as in load_tokenizer

        self.cfg, self.engine, self.rewards, self.tokenizer = cfg, engine, rewards, tokenizer
        self.chat_format = get_chat_format(cfg.chat_format)
        self.sampling = SamplingParams(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
        )
        self.truncated = 0
        self.generated_tokens = 0
        self.timing = {"generate_s": 0.0, "score_s": 0.0}

    def encode(self, record: dict) -> list[int]:
        ids, truncated = self.chat_format.encode_prompt(
            messages_of(record), self.tokenizer, self.cfg.max_prompt_length
        )
        self.truncated += truncated
        return ids

    def score_batch(
        self, batch: int, records: list[dict], prompt_ids: list[list[int]], keys: list[str]
    ) -> list[dict]:
        """Cache rows (``key``, ``scores`` [n] with None for invalid, ``completions``)."""
        from rm.functions import reward_inputs, score_rewards  # lazy: as in load_tokenizer

        n = self.cfg.n
        sampling = replace(self.sampling, seed=self.cfg.seed * 1_000_003 + batch)
        started = time.perf_counter()
        out = self.engine.generate(prompt_ids, sampling, n)
        self.timing["generate_s"] += time.perf_counter() - started
        self.generated_tokens += sum(len(c) for c in out.completion_ids)
        started = time.perf_counter()
        texts = self.tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
        prompts, columns = reward_inputs([r for r in records for _ in range(n)])
        columns.update(prompt_ids=out.prompt_ids, completion_ids=out.completion_ids)
        scored = score_rewards(self.rewards, prompts, texts, columns)
        self.timing["score_s"] += time.perf_counter() - started
        total, kept = scored.total.tolist(), scored.kept.tolist()
        return [
            {
                "key": key,
                "scores": [total[i * n + j] if kept[i * n + j] else None for j in range(n)],
                "completions": texts[i * n : (i + 1) * n],
            }
            for i, key in enumerate(keys)
        ]


def sample_and_score(
    cfg: FilterConfig,
    records: list[dict],
    keys: list[str],
    scorer: _Scorer,
    cache: SampleCache,
    progress: Callable[[int, int], None],
) -> int:
    """Score every batch not fully in the cache; returns the number of prompts generated."""
    prompt_ids = [scorer.encode(r) for r in records]  # all of them: truncations are counted
    generated = 0
    done = sum(k in cache.rows for k in keys)
    progress(done, len(keys))
    for b, start in enumerate(range(0, len(records), cfg.batch_size)):
        batch_keys = keys[start : start + cfg.batch_size]
        if all(k in cache.rows for k in batch_keys):
            continue
        part = slice(start, start + cfg.batch_size)
        rows = scorer.score_batch(b, records[part], prompt_ids[part], batch_keys)
        cache.append(rows)
        generated += len(rows)
        done = sum(k in cache.rows for k in keys)
        progress(done, len(keys))
    return generated


def score_matrix(cache: SampleCache, keys: list[str]) -> np.ndarray:
    """``[P, n]`` float64 scores (NaN where the reward source gave none)."""
    return np.array(
        [[np.nan if s is None else s for s in cache.rows[k]["scores"]] for k in keys],
        dtype=np.float64,
    )


# ------------------------------------------------------------------ thresholds


def thresholds(cfg: FilterConfig, mean: np.ndarray, std: np.ndarray) -> tuple[float, list]:
    """``(std floor, mean intervals)`` from the config and the scored pool (valid prompts)."""
    floor = F.std_threshold(std, **cfg.std_rule)
    rule = cfg.mean_rule
    if "calibration" in rule:
        return floor, F.calibrated_intervals(*load_calibration(rule["calibration"]))
    return floor, [F.mean_interval(mean, **rule)]


# ------------------------------------------------------------------ the run


def _kept_records(records: list[dict], selection: F.Selection) -> list[dict]:
    return [
        {
            **{k: v for k, v in records[i].items() if v is not None},
            "score_mean": float(selection.mean[i]),
            "score_std": float(selection.std[i]),
        }
        for i in selection.kept
    ]


def _warn_shortfall(selection: F.Selection) -> None:
    asked, kept = sum(selection.quotas.values()), len(selection.kept)
    if kept < asked:
        warnings.warn(f"keep: {asked} asked, only {kept} prompts survived", stacklevel=3)
    for c, lack in selection.shortfall.items():
        warnings.warn(
            f"category {c!r}: {lack} prompts short of its quota "
            f"{selection.quotas[c]}; given to the other categories pro rata",
            stacklevel=3,
        )


def check_paths(cfg: FilterConfig, engine=None, tokenizer=None, reward_given: bool = False) -> None:
    """Before the tiny world, a model or a sample: a given policy comes with prompts and rewards
    (:func:`check_inputs`), the kept file, the report and the cache can be written, and the
    policy is a model directory (with safetensors weights when the hf engine loads them here).
    One line naming the field (and the path) on failure."""
    check_inputs(cfg, reward_given)
    check_output_file(cfg.out, "out")
    check_output_dir(cfg.report_path, "report_dir")
    if cfg.use_cache:
        check_output_dir(cfg.cache_path, "cache_dir")
    if cfg.policy is not None and (engine is None or tokenizer is None):
        check_model_dir(cfg.policy, "policy", weights=engine is None and cfg.rollout.engine == "hf")


def _prepare(cfg, engine, reward, tokenizer):
    check_paths(cfg, engine, tokenizer, reward_given=reward is not None)
    cfg = resolve_defaults(cfg, need_policy=engine is None)
    records = load_prompt_records(cfg.prompts, cfg.default_category)
    if tokenizer is None:
        if cfg.policy is None:
            raise ValueError("policy: with a ready engine, give config.policy or tokenizer=")
        tokenizer = load_tokenizer(cfg.policy)
    rewards = build_rewards(cfg.rewards) if reward is None else as_rewards(reward)
    return cfg, records, tokenizer, rewards


def run_filter(
    config: FilterConfig,
    engine=None,
    reward=None,
    tokenizer=None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> FilterResult:
    """Sample, score (resuming from the cache), select, write the kept prompts and the report.

    ``engine``: a ready :class:`~rollouts.base.RolloutEngine` (default: built from
    ``config.policy`` / ``config.engine``); ``reward``: ready reward components or a callable
    (default: ``config.rewards``); ``tokenizer``: default ``config.policy``'s. A caller passing
    its own engine whose weights are not ``config.policy``'s files, or its own reward, should
    set ``config.cache_tag`` (e.g. the PEI round) so cached samples of other weights or another
    reward are not reused (a given reward enters the key by its component names only).
    """
    cfg, records, tokenizer, rewards = _prepare(config, engine, reward, tokenizer)
    keys = [prompt_key(i, r) for i, r in enumerate(records)]
    given = None if reward is None else [r.name for r in rewards]
    cache_file = cfg.cache_path / f"{cache_key(cfg, keys, given)}.jsonl" if cfg.use_cache else None
    cache = SampleCache(cache_file)
    cached = sum(k in cache.rows for k in keys)
    engine = engine if engine is not None else build_engine(cfg, tokenizer)
    scorer = _Scorer(cfg, engine, rewards, tokenizer)
    started = time.perf_counter()
    generated = sample_and_score(cfg, records, keys, scorer, cache, progress)
    elapsed = time.perf_counter() - started
    scores = score_matrix(cache, keys)
    mean, std, valid = F.prompt_stats(scores)
    floor, intervals = thresholds(cfg, mean[valid], std[valid])
    categories = [r["category"] for r in records]
    selection = F.select_prompts(
        scores, categories, cfg.keep, floor, intervals, cfg.alpha, cfg.seed, cfg.drop_zero_std
    )
    _warn_shortfall(selection)
    timing = {**scorer.timing, "total_s": elapsed}
    timing["prompts_per_s"] = generated / elapsed if generated and elapsed > 0 else 0.0
    result = FilterResult(
        kept=_kept_records(records, selection),
        counts=selection.counts,
        thresholds=selection.thresholds.as_dict(),
        quotas=selection.quotas,
        final_quotas=selection.final_quotas,
        shortfall=selection.shortfall,
        n_prompts=len(records),
        generated=generated,
        cached=cached,
        truncated_prompts=scorer.truncated,
        generated_tokens=scorer.generated_tokens,
        timing=timing,
        out=Path(cfg.out),
        report_dir=cfg.report_path,
    )
    _write_outputs(cfg, result, selection)
    _report_to_trackers(cfg, result, selection, records, [cache.rows[k] for k in keys])
    return result


def _write_outputs(cfg: FilterConfig, result: FilterResult, selection: F.Selection) -> None:
    write_jsonl(result.kept, cfg.out)
    rule = rule_text(cfg.std_rule, cfg.mean_rule)
    write_report(cfg.report_path, result, selection, asdict(cfg), rule)


#: Prompts shown in the trackers' table of sample answers.
TRACKER_SAMPLES = 32


def _report_to_trackers(
    cfg: FilterConfig, result: FilterResult, selection: F.Selection, records: list, rows: list
) -> None:
    """The run's counts and timing as scalars (step 0) and a table of the first prompts with
    their first answer, scores and whether they were kept (``report_to``; the report folder)."""
    if not cfg.report_to:
        return
    tracker = Tracker.start(cfg.report_to, cfg.report_path, cfg.project, cfg.run_name,
                            config_to_dict(cfg))  # fmt: skip
    scalars = {"prompts": result.n_prompts, "kept": len(result.kept), "cached": result.cached}
    scalars.update({f"timing/{k}": v for k, v in result.timing.items()})
    for step, per_category in result.counts.items():
        scalars.update({f"counts/{step}/{c}": n for c, n in per_category.items()})
    tracker.log(scalars, step=0)
    kept = set(selection.kept)
    tracker.log_samples(
        [
            {
                "prompt": r.get("prompt") or messages_of(r),
                "category": r["category"],
                "answer": row["completions"][0],
                "scores": str(row["scores"]),
                "mean": float(selection.mean[i]),
                "std": float(selection.std[i]),
                "kept": i in kept,
            }
            for i, (r, row) in enumerate(zip(records[:TRACKER_SAMPLES], rows))
        ],
        step=0,
    )
    tracker.finish()
