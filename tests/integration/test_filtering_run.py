"""End to end: `align filter` on the tiny world (tiny SFT policy, rule reward / tiny reward model),
the cache and kill-and-resume, bad inputs, and FinanceIQ questions when the shared data exist."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from align.core.data import DataError, load_records
from align.filter.run import FilterConfig, load_prompt_records, run_filter

SHARED = Path(
    os.environ.get("ALIGN_SHARED_DATA", Path(__file__).resolve().parents[2] / "../shared/data")
)
PER_CATEGORY = 4  # 6 categories → 24 prompts, in 6 batches of 4
RUN = {"n": 4, "max_new_tokens": 12, "batch_size": 4, "keep": 8, "seed": 3}


@pytest.fixture(scope="module")
def prompt_file(tiny_world, tmp_path_factory) -> Path:
    rows = load_records(tiny_world.data("prompts"), "prompts").to_list()
    by_category: dict[str, list] = {}
    for r in rows:
        by_category.setdefault(r["category"], []).append(r)
    picked = [r for c in sorted(by_category) for r in by_category[c][:PER_CATEGORY]]
    path = tmp_path_factory.mktemp("filter") / "prompts.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked))
    return path


def _config(tiny_world, prompt_file, out: Path, **overrides) -> FilterConfig:
    fields = {"prompts": str(prompt_file), "policy": str(tiny_world.policy), "out": str(out),
              "rewards": [{"type": "rule", "rule": "tiny"}]}  # fmt: skip
    return FilterConfig(**{**fields, **RUN, **overrides})


def _cache_rows(report_dir: Path) -> dict[str, dict]:
    (cache,) = (report_dir / "cache").glob("*.jsonl")
    return {r["key"]: r for r in map(json.loads, cache.read_text().splitlines())}


@pytest.fixture(scope="module")
def full_run(tiny_world, prompt_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "kept.jsonl"
    return run_filter(_config(tiny_world, prompt_file, out))


@pytest.mark.slow
def test_writes_kept_set_and_report(full_run, prompt_file):
    result = full_run
    assert result.generated == 6 * PER_CATEGORY and result.cached == 0
    kept = load_records(result.out, "prompts").to_list()  # a valid prompts file
    assert [r["id"] for r in kept] == [r["id"] for r in result.kept] and len(kept) == RUN["keep"]
    # μ and σ recomputed independently from the cached raw scores (ddof 1)
    cached = {r["key"].split(":")[0]: r["scores"] for r in _cache_rows(result.report_dir).values()}
    ids = [r["id"] for r in load_records(prompt_file, "prompts")]
    for r in kept:
        scores = np.array(cached[str(ids.index(r["id"]))], dtype=float)
        assert r["score_mean"] == pytest.approx(scores.mean(), abs=1e-12)
        assert r["score_std"] == pytest.approx(scores.std(ddof=1), abs=1e-12)
    assert [r["score_std"] for r in kept] == sorted((r["score_std"] for r in kept), reverse=True)
    # every step only removes; the kept count per category is the final quota
    counts = result.counts
    steps = ["input", "scored", "std", "mean", "kept"]
    for c in counts["input"]:
        assert [counts[s][c] for s in steps] == sorted((counts[s][c] for s in steps), reverse=True)
        assert counts["kept"][c] == result.final_quotas[c]
    assert counts["input"] == dict.fromkeys(counts["input"], PER_CATEGORY)
    report = (result.report_dir / "report.md").read_text()
    for c in counts["input"]:
        assert f"| {c} | {PER_CATEGORY} |" in report
    for png in ("mu.png", "sigma.png"):
        assert (result.report_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((result.report_dir / "summary.json").read_text())
    assert summary["counts"] == counts


def _cli_args(tiny_world, prompt_file, out: Path) -> list[str]:
    args = ["--prompts", str(prompt_file), "--policy", str(tiny_world.policy), "--out", str(out),
            "--rewards", "tiny"]  # fmt: skip
    for name, value in RUN.items():
        args += [f"--{name}", str(value)]
    return args


CLI = ["-m", "align.cli", "filter"]


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_result(
    full_run, tiny_world, prompt_file, tmp_path
):
    out = tmp_path / "kept.jsonl"
    cache_dir = tmp_path / "kept_report" / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, *CLI, *_cli_args(tiny_world, prompt_file, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 90
    lines = 0
    while lines < 2 * RUN["batch_size"] and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
        files = list(cache_dir.glob("*.jsonl"))
        lines = files[0].read_bytes().count(b"\n") if files else 0
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not out.exists()
    resumed = run_filter(_config(tiny_world, prompt_file, out))
    total = 6 * PER_CATEGORY
    assert resumed.cached >= 2 * RUN["batch_size"] and resumed.cached < total
    assert resumed.generated == total - resumed.cached  # fewer new generations
    assert resumed.kept == full_run.kept  # same result as the uninterrupted run
    assert _cache_rows(resumed.report_dir) == _cache_rows(full_run.report_dir)


@pytest.mark.slow
def test_rerun_with_calibration_reads_everything_from_cache(full_run, tiny_world, prompt_file):
    from rm.evaluate import summarize, write_report

    # calibration in the exact format of `align rm eval --out`: pairs around the tiny rule's
    # scale where the middle scores are the accurate ones
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, size=400)
    good = np.abs(base - 0.5) < 0.25
    chosen = np.where(good, base + 0.05, base - 0.05)
    rejected = np.where(good, base - 0.05, base + 0.05)
    result = summarize(chosen.tolist(), rejected.tolist(), ["x"] * 400, n_bins=8)
    calib = full_run.report_dir / "calibration.json"
    write_report(result, calib)
    cfg = _config(tiny_world, prompt_file, full_run.out.with_name("calibrated.jsonl"))
    cfg.calibration, cfg.cache_dir = str(calib), str(full_run.report_dir / "cache")
    cfg.keep = None
    again = run_filter(cfg)
    assert again.generated == 0 and again.cached == 6 * PER_CATEGORY
    kept_bins = [b for b in result["score_bins"] if b["accuracy"] >= result["accuracy"]]
    assert kept_bins and len(kept_bins) < len(result["score_bins"])
    lo, hi = again.thresholds["mean_intervals"][0]
    assert len(again.thresholds["mean_intervals"]) == 1  # the accurate bins are contiguous
    assert lo == pytest.approx(kept_bins[0]["low"] / 2 + result["score_bins"][1]["high"] / 2)
    assert all(lo <= r["score_mean"] <= hi for r in again.kept)
    assert sum(again.counts["kept"].values()) == sum(again.counts["mean"].values())


@pytest.mark.slow
def test_nan_scores_drop_the_prompt_and_are_counted(tiny_world, prompt_file, tmp_path):
    def reward(prompts, completions, category, **_):
        nan = float("nan")
        return [nan if c == "保险" else float(len(t)) for c, t in zip(category, completions)]

    # the PEI path: a ready engine, tokenizer and reward function, no policy path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rollouts.hf_generate import GenerateEngine

    tokenizer = AutoTokenizer.from_pretrained(tiny_world.policy)
    engine = GenerateEngine.from_tokenizer(
        AutoModelForCausalLM.from_pretrained(tiny_world.policy), tokenizer
    )
    cfg = _config(tiny_world, prompt_file, tmp_path / "k.jsonl", use_cache=False, policy=None)
    cfg.n, cfg.max_new_tokens, cfg.batch_size, cfg.keep = 2, 6, 24, None
    result = run_filter(cfg, engine=engine, reward=reward, tokenizer=tokenizer)
    assert result.counts["scored"]["保险"] == 0
    others = [c for c in result.counts["scored"] if c != "保险"]
    assert all(result.counts["scored"][c] == PER_CATEGORY for c in others)
    assert "保险" not in {r["category"] for r in result.kept}


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="n: expected >= 2"):
        FilterConfig(n=1)
    with pytest.raises(ValueError, match="at most one"):
        FilterConfig(mean_range=(0, 1), mean_quantiles=(0.1, 0.9))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompt_records(empty)
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"prompt": "a", "category": "x"}\n{"prompt": "b"}\n')
    with pytest.raises(DataError, match="row 2: field 'category'"):
        load_prompt_records(missing)


def test_reward_spellings(tmp_path):
    from align.core.config import load_config, text_value
    from rm.spec import RewardSpec

    assert RewardSpec.from_text("tiny") == [{"type": "rule", "rule": "tiny"}]
    assert RewardSpec.from_text("rule:mcq") == [{"type": "rule", "rule": "mcq"}]
    assert RewardSpec.from_text("http://127.0.0.1:8000") == [
        {"type": "http", "url": "http://127.0.0.1:8000"}
    ]
    assert RewardSpec.from_text(str(tmp_path)) == [{"type": "model", "path": str(tmp_path)}]
    assert RewardSpec.from_text("pkg.mod:f") == [{"type": "python", "fn": "pkg.mod:f"}]
    assert RewardSpec.from_text("[{type: rule, rule: mcq, weight: 2}]") == [
        {"type": "rule", "rule": "mcq", "weight": 2}
    ]
    assert text_value("-1,2.5", tuple[float, float], "--mean_range") == [-1.0, 2.5]
    cfg = load_config(FilterConfig, None, ["--mean_range", "-1,2.5", "--rewards", "tiny",
                                           "--rewards", "pkg.mod:f"])  # fmt: skip
    assert cfg.mean_range == (-1.0, 2.5)
    kinds = [(r.type, r.rule or r.fn) for r in cfg.rewards]
    assert kinds == [("rule", "tiny"), ("python", "pkg.mod:f")]
    with pytest.raises(ValueError, match="engine_options: no longer a field; set rollout.vllm"):
        load_config(FilterConfig, None, ["--engine_options", "{dtype: bfloat16}"])
    with pytest.raises(ValueError, match="expected a reward model directory"):
        RewardSpec.from_text("nonsense")
    with pytest.raises(ValueError, match="mean_range: expected \\(lo, hi\\) with lo <= hi"):
        load_config(FilterConfig, None, ["--mean_range", "2,1"])


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "financeiq").is_dir(), reason="../shared/data not present")
def test_financeiq_questions_with_the_tiny_reward_model(tiny_world, tmp_path):
    cfg = FilterConfig(
        prompts=str(SHARED / "financeiq" / "dev"),
        policy=str(tiny_world.policy),
        rewards=[{"type": "model", "path": str(tiny_world.reward)}],
        n=2,
        max_new_tokens=4,
        max_prompt_length=96,
        batch_size=50,
        keep=20,
        out=str(tmp_path / "fin.jsonl"),
    )
    result = run_filter(cfg)
    files = sorted((SHARED / "financeiq" / "dev").glob("*.csv"))
    assert result.counts["input"] == {f.stem: 5 for f in files}
    assert sum(result.counts["kept"].values()) == len(result.kept) == 20
    report = (result.report_dir / "report.md").read_text()
    for f in files:
        assert f"| {f.stem} | 5 | 5 |" in report
    assert all(r["answer"] in "ABCD" for r in result.kept)
    assert result.truncated_prompts == 50  # every zero-shot prompt is longer than 96 tokens
    assert "50 prompts left-truncated" in report


def test_dtype_and_attention_reach_the_policy_the_filter_and_eval_load(tiny_world, tmp_path):
    """``dtype`` / ``attn_implementation`` of the filter and eval configs are what the loaded
    policy has; unset, the checkpoint's dtype (float32 here) and transformers' choice. Set, they
    change the filter's cache key (the samples depend on them)."""
    from align.filter.run import _load_policy, cache_key
    from eval.gsb_run import GSBConfig, load_policy

    base = _config(tiny_world, tmp_path / "p.jsonl", tmp_path / "k.jsonl")
    set_ = replace(base, dtype="bfloat16", attn_implementation="eager")
    model = _load_policy(set_)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert next(_load_policy(base).parameters()).dtype == torch.float32
    assert cache_key(set_, ["k"]) != cache_key(base, ["k"])
    gsb = GSBConfig(candidate=str(tiny_world.policy), dtype="float16", attn_implementation="sdpa")
    model, _ = load_policy(gsb.candidate, "candidate", gsb.dtype, gsb.attn_implementation)
    assert next(model.parameters()).dtype == torch.float16
    assert model.config._attn_implementation == "sdpa"
