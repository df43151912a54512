"""`accelerate launch recipes/sft.py` on the tiny world: the tiny policy, answer-only loss,
per-category loss, the dynamic mix; the held-out loss falls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from align.core.data import load_records, messages_of, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def launch(recipe: str, config: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(ROOT / "recipes/accelerate_configs/cpu.yaml"),
            "--num_cpu_threads_per_process",
            "2",
            str(ROOT / "recipes" / recipe),
            "--config",
            str(ROOT / "recipes/configs" / config),
            *overrides,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def held_out_file(world, path: Path, per_category: int = 8) -> Path:
    rows, seen = [], {}
    for r in load_records(world.data("eval_prompts"), "prompts"):
        if seen.get(r["category"], 0) < per_category:
            seen[r["category"]] = seen.get(r["category"], 0) + 1
            messages = [*messages_of(r), {"role": "assistant", "content": r["reference"]}]
            rows.append({"messages": messages, "category": r["category"]})
    write_jsonl(rows, path)
    return path


@pytest.mark.slow
def test_sft_recipe_lowers_held_out_loss_and_moves_the_mix(tiny_world, tmp_path):
    out = tmp_path / "run"
    # the tiny default training data: the preference pairs' chosen answers
    train = [
        {
            "messages": [*messages_of(r), {"role": "assistant", "content": r["chosen"]}],
            "category": r["category"],
        }
        for r in load_records(tiny_world.data("prefs"), "prefs")
    ]
    write_jsonl(train, tmp_path / "train.jsonl")
    done = launch(
        "sft.py",
        "sft_tiny.yaml",
        "--model",
        str(tiny_world.policy),
        "--train_data",
        f"[{tmp_path / 'train.jsonl'}]",
        "--eval_data",
        str(held_out_file(tiny_world, tmp_path / "held.jsonl")),
        "--output_dir",
        str(out),
        "--epoch_size",
        "64",
        "--num_train_epochs",
        "2",
        "--disable_tqdm",
        "true",
    )
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    before, after = summary["held_out_before"], summary["held_out_after"]
    assert after["loss"] < before["loss"], (before, after)
    assert "held-out loss" in done.stdout
    # initial mix: 2 general sub-domains of 6 at 1 : 1, equal counts -> 1/4 each, others 1/8
    init = summary["initial_weights"]
    assert init["客服对话"] == pytest.approx(0.25) and init["保险"] == pytest.approx(0.125)
    mixture = summary["mixture"]
    assert len(mixture["history"]) == 2  # one update per epoch
    weights = mixture["weights"]
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-9)
    assert all(0.5 * init[c] - 1e-9 <= w <= 2 * init[c] + 1e-9 for c, w in weights.items())
    assert weights != pytest.approx(init)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any(f"loss/{c}" in r for r in rows for c in summary["categories"])
    assert all(f"eval_loss/{c}" in rows[0] for c in summary["categories"])
    mixes = [r for r in rows if any(k.startswith("mix/") for k in r)]
    assert len(mixes) == 2 and mixes[-1]["mix/保险"] == pytest.approx(weights["保险"])
    assert (out / "final" / "model.safetensors").is_file()
