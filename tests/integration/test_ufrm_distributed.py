"""UFRM across processes: `accelerate launch --num_processes 2 recipes/ufrm.py` on CPU (gloo DDP)
trains the same model as one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


def _overrides(world, data: Path, out: Path, batch: int) -> list[str]:
    values = dict(
        model=world.reward,
        train_data=data,
        output_dir=out,
        per_device_train_batch_size=batch,
        num_train_epochs=1,
        learning_rate=1e-4,
        max_length=96,
        cl_weight=0,  # InfoNCE negatives are per process: only BT + IRL are batch-split exact
        seed=3,
        logging_steps=1,
        disable_tqdm="true",
        report_to="none",
        gradient_checkpointing="false",
    )
    return [item for k, v in values.items() for item in (f"--{k}", str(v))]


@pytest.mark.slow
def test_two_processes_train_like_one_on_the_same_global_batch(tiny_world, tmp_path):
    from align.core.data import load_records, write_jsonl
    from align.ufrm.run import run
    from rm.ufrm import UFRMConfig

    data = tmp_path / "train.jsonl"
    write_jsonl(list(load_records(tiny_world.data("prefs"), "prefs"))[::30][:32], data)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    launch += [str(ROOT / "recipes/accelerate_configs/ddp.yaml"), "--num_processes", "2"]
    two = subprocess.run(
        [
            *launch,
            str(ROOT / "recipes/ufrm.py"),
            *_overrides(tiny_world, data, tmp_path / "two", 4),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-4000:]
    assert two.stdout.count("final reward model:") == 1  # the main process reports, once

    one = UFRMConfig.from_sources(None, _overrides(tiny_world, data, tmp_path / "one", 8))
    run(one)
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two")]
    losses = [[h["loss"] for h in s["stages"][0]["log_history"] if "loss" in h] for s in summaries]
    assert len(losses[0]) == len(losses[1]) == 4  # 32 pairs / global batch 8
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    a = load_file(tmp_path / "one/stage1/model.safetensors")
    b = load_file(tmp_path / "two/stage1/model.safetensors")
    start = load_file(Path(tiny_world.reward) / "model.safetensors")

    # Adam turns float round-off on near-zero gradients into lr-sized steps of either sign, so
    # single weights can differ; the whole update must agree (alone, each rank would differ ~1x)
    def norm(d):
        return sum(float((t.double() ** 2).sum()) for t in d.values()) ** 0.5

    moved = norm({k: a[k] - start[k] for k in a})
    assert norm({k: a[k] - b[k] for k in a}) < 1e-2 * moved
    stats = [s["stages"][0]["score_stats"] for s in summaries]
    assert stats[1]["count"] == 64 and stats[1]["mean"] == pytest.approx(stats[0]["mean"], abs=1e-5)
