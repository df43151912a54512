"""UFRM end to end through the user's entry points: `align rm train` (two stages), `align rm
eval`, `align data financeiq-prefs`; the saved directory is what PPO and LocalRewardModel load."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from align.core.data import write_jsonl


def align(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "align.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )


def test_financeiq_prefs_command(tmp_path):
    d = tmp_path / "fiq"
    d.mkdir()
    (d / "基金.csv").write_text(
        ",Question,A,B,C,D,Answer\n0,问？,甲,乙,丙,丁,C\n", encoding="utf-8"
    )
    out = align("data", "financeiq-prefs", str(d), "--out", str(tmp_path / "p.jsonl"))
    assert out.returncode == 0, out.stderr
    assert "3 preference pairs" in out.stdout
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["chosen"] for r in rows} == {"C. 丙"} and len(rows) == 3
    missing = align("data", "financeiq-prefs", str(tmp_path / "nope"), "--out", "x.jsonl")
    assert missing.returncode == 2 and "no FinanceIQ" in missing.stderr


def test_rm_train_rejects_unknown_field(tmp_path):
    out = align("rm", "train", "--no_such_field", "1", "--show-config")
    assert out.returncode == 2 and "no_such_field" in out.stderr


@pytest.mark.slow
def test_two_stages_save_reloadable_models_and_eval(tiny_world, tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from align.core.data import load_records

    prefs = list(load_records(tiny_world.data("prefs"), "prefs"))
    general = [r for r in prefs if r["category"] == "客服对话"][:48]
    finance = [r for r in prefs if r["category"] == "金融计算"][:48]
    write_jsonl(general, tmp_path / "general.jsonl")
    write_jsonl(finance, tmp_path / "finance.jsonl")
    held = [r for r in load_records(tiny_world.data("eval_prefs"), "prefs")][:60]
    write_jsonl(held, tmp_path / "held.jsonl")
    out = align(
        "rm",
        "train",
        "--model",
        str(tiny_world.reward),
        "--train_data",
        str(tmp_path / "general.jsonl"),
        "--stage2_data",
        str(tmp_path / "finance.jsonl"),
        "--eval_data",
        f"[{tmp_path / 'held.jsonl'}]",
        "--output_dir",
        str(tmp_path / "run"),
        "--num_train_epochs",
        "1",
        "--per_device_train_batch_size",
        "8",
        "--max_length",
        "128",
        "--replay_share",
        "0.2",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "stage 2: 48 pairs" in out.stdout
    # one progress bar per stage, finished: 48 pairs / 8 = 6 steps; (48 + 12 replay) / 8 → 8
    assert re.search(r"stage 1 \S* 6/6 .*loss \d", out.stdout), out.stdout
    assert re.search(r"stage 2 \S* 8/8 ", out.stdout), out.stdout
    summary = json.loads((tmp_path / "run/summary.json").read_text(encoding="utf-8"))
    assert [s["stage"] for s in summary["stages"]] == [1, 2]
    assert summary["stages"][1]["data"]["replay"] == 12  # 0.2 = 12 / (48 + 12)
    for stage in ("stage1", "stage2"):
        d = tmp_path / "run" / stage
        stats = json.loads((d / "score_stats.json").read_text())
        assert set(stats) == {"mean", "std", "count"} and stats["count"] == 2 * (
            48 if stage == "stage1" else 60
        )
        assert (d / "model.safetensors").is_file()
        config = AutoConfig.from_pretrained(d)
        config.num_labels = 1
        model, info = AutoModelForSequenceClassification.from_pretrained(
            d, config=config, output_loading_info=True
        )
        assert not info["unexpected_keys"] and not info["missing_keys"]
        assert not any("proj" in k for k in model.state_dict() if "cl_" in k)
    s1 = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run/stage1")
    s2 = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run/stage2")
    assert not torch.equal(s1.score.weight, s2.score.weight)  # stage 2 trained the head on

    ev = align(
        "rm",
        "eval",
        "--model",
        str(tmp_path / "run/stage2"),
        "--data",
        str(tmp_path / "held.jsonl"),
        "--out",
        str(tmp_path / "ev.json"),
    )
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "**overall** | 60 |" in ev.stdout
    result = json.loads((tmp_path / "ev.json").read_text(encoding="utf-8"))
    assert result["n"] == 60 and 0 <= result["accuracy"] <= 1
    assert sum(b["n"] for b in result["score_bins"]) == 60
    assert (tmp_path / "ev.md").is_file()
