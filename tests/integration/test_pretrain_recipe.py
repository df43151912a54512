"""`accelerate launch recipes/pretrain.py` on the tiny world: bucketed stages, constant tokens per
step, per-category loss, the mixture moved between stages; the held-out loss falls."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_sft_recipe import launch


@pytest.mark.slow
def test_pretrain_recipe_lowers_held_out_loss(tiny_world, tmp_path):
    from align.core.data import write_jsonl
    from align.pretrain.run import tiny_documents

    write_jsonl(tiny_documents(tiny_world, seed=0), tmp_path / "docs.jsonl")  # the tiny default
    out = tmp_path / "run"
    launch(
        "pretrain.py",
        "pretrain_tiny.yaml",
        "--model",
        str(tiny_world.policy),
        "--docs",
        str(tmp_path / "docs.jsonl"),
        "--output_dir",
        str(out),
        "--stage_documents",
        "60",
    )
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    before, after = summary["held_out_before"], summary["held_out_after"]
    assert after["all"] < before["all"] - 0.5, (before, after)
    assert set(before) == {*summary["categories"], "all"}
    assert [s["stage"] for s in summary["stages"]] == [0, 1]
    first = summary["stages"][0]
    assert first["documents"] == 60 and first["buckets"]["documents"] == 60
    weights, initial = first["weights_next"], summary["mixture"]["initial"]
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-9)
    assert all(0.5 * initial[c] - 1e-9 <= w <= 2 * initial[c] + 1e-9 for c, w in weights.items())
    steps = [
        json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    train_steps = [r for r in steps if "bucket" in r]
    assert train_steps and {r["bucket"] for r in train_steps} <= {64, 128, 256}
    assert any(k.startswith("loss/") for r in train_steps for k in r)
    assert (out / "final" / "model.safetensors").is_file()
    # save_every 5 and every stage's end; complete checkpoints only (no .step-N.tmp left)
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    ends = {summary["stages"][0]["steps"], summary["steps"]}
    expected = set(range(5, summary["steps"] + 1, 5)) | ends
    assert checkpoints == sorted(f"step-{n}" for n in expected)
    last = out / "checkpoints" / f"step-{summary['steps']}"
    assert (last / "model" / "model.safetensors").is_file()
    assert (last / "accelerate" / "optimizer.bin").is_file()
    assert "| **all** |" in (out / "report.md").read_text(encoding="utf-8")
