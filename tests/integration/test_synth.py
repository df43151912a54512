"""``align data synth``: top-k selection by hand, provenance and report counts, resumption after
SIGKILL (byte-identical outputs), an empty prompt file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.synth.run import SynthConfig, run_synth, select_top_k
from rm.spec import tiny_rule

SAMPLING = ["--n", "2", "--k", "2", "--max_new_tokens", "16", "--batch_size", "1"]


def test_select_top_k_by_hand():
    #        0     1     2    3     4    5
    scores = [0.5, None, 0.9, -1.0, 0.9, 0.2]
    s = select_top_k(scores, k=2, min_score=0.0)
    assert s.kept == [2, 4]  # ties: the earlier answer first
    assert s.below_floor == [3] and s.invalid == [1] and s.beyond_k == [0, 5]
    s = select_top_k(scores, k=10, min_score=None)
    assert s.kept == [2, 4, 0, 5, 3] and s.below_floor == [] and s.beyond_k == []
    assert select_top_k(scores, k=1, min_score=1.0).kept == []


@pytest.fixture(scope="module")
def inputs(tiny_world, tmp_path_factory):
    """Five prompts and two policies (the tiny policy and a copy under another name)."""
    root = tmp_path_factory.mktemp("synth")
    lines = Path(tiny_world.data("prompts")).read_text(encoding="utf-8").splitlines()[:5]
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    second = root / "policy_b"
    shutil.copytree(tiny_world.policy, second)
    return prompts, [str(tiny_world.policy), str(second)]


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory):
    prompts, policies = inputs
    out = tmp_path_factory.mktemp("synth_full") / "out"
    cfg = SynthConfig(
        prompts=str(prompts), out=str(out), policies=policies, rewards=tiny_rule(),
        n=2, k=2, max_new_tokens=16, batch_size=1, min_score=0.1,
    )  # fmt: skip
    return out, run_synth(cfg)


def test_records_have_provenance_and_counts_add_up(inputs, uninterrupted):
    _, policies = inputs
    out, report = uninterrupted
    records = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    t = report["total"]
    assert t["prompts"] == 5 and t["generated"] == 5 * 2 * 2
    assert t["generated"] == t["kept"] + t["below_floor"] + t["invalid"] + t["beyond_k"]
    assert len(records) == t["kept"] <= 5 * 2
    assert t["kept"] > 0 and t["below_floor"] > 0  # the floor both keeps and drops here
    for cat in report["per_category"].values():
        per_model = cat["per_model"].values()
        for kind in ("generated", "kept", "below_floor", "invalid", "beyond_k"):
            assert sum(m[kind] for m in per_model) == cat[kind]
    for r in records:
        p = r["provenance"]
        assert p["model"] in policies and p["rank"] in (1, 2) and p["score"] >= 0.1
        assert r["messages"][-1]["role"] == "assistant" and r["messages"][0]["role"] == "user"
        assert r["category"]
    # ranks within a prompt: 1, 2, ... with non-increasing scores
    by_prompt: dict[int, list] = {}
    for r in records:
        by_prompt.setdefault(r["provenance"]["prompt_index"], []).append(r["provenance"])
    for kept in by_prompt.values():
        assert [p["rank"] for p in kept] == list(range(1, len(kept) + 1))
        assert all(a["score"] >= b["score"] for a, b in zip(kept, kept[1:]))


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "align.cli.app", "data", "synth", *args]


def test_resume_after_sigkill_is_byte_identical(inputs, uninterrupted, tmp_path):
    prompts, policies = inputs
    full, _ = uninterrupted
    out = tmp_path / "out"
    args = ["--prompts", str(prompts), "--policies", *policies, "--rewards", "tiny",
            "--out", str(out), "--min_score", "0.1", *SAMPLING]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(_cli(args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    log = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= log.read_bytes().count(b"\n") < 5, "the kill should land mid-run"
    assert not (out / "sft.jsonl").exists()
    done = subprocess.run(_cli(args), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("results.jsonl", "sft.jsonl", "report.json"):
        assert (out / name).read_bytes() == (full / name).read_bytes(), name


def test_empty_prompt_file_is_one_line_exit_2(inputs, tmp_path):
    _, policies = inputs
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    done = subprocess.run(
        _cli(
            [
                "--prompts",
                str(empty),
                "--policies",
                policies[0],
                "--rewards",
                "tiny",
                "--out",
                str(tmp_path / "o"),
            ]
        ),  # fmt: skip
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "empty" in lines[0] and str(empty) in lines[0], done.stderr
