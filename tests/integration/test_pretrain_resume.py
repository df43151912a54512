"""Mid-run checkpoints of `recipes/pretrain.py` and exact resume: a run stopped (twice: in the
middle of the first stage, then in the middle of the second, after the mixture moved), or killed
with SIGKILL as soon as a checkpoint appears, and resumed from its latest checkpoint ends with the
same weights, metrics lines and summary as a run that was never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align.core.checkpoints import latest_checkpoint
from align.pretrain.run import PretrainConfig, run


class Crash(RuntimeError):
    """Stands in for a process killed after logging ``step`` (past its last checkpoint)."""


def crash_at(step: int):
    def progress(now: int, metrics: dict) -> None:
        if now == step:
            raise Crash(step)

    return progress


@pytest.fixture(scope="module")
def docs(tiny_world, tmp_path_factory):
    from align.core.data import write_jsonl
    from align.pretrain.run import tiny_documents

    where = tmp_path_factory.mktemp("pretrain-docs")
    rows = tiny_documents(tiny_world, seed=0)
    write_jsonl(rows[:160], where / "train.jsonl")
    write_jsonl(rows[-12:], where / "held.jsonl")
    return where


def config(tiny_world, docs, out, **overrides) -> PretrainConfig:
    values = dict(
        model=str(tiny_world.policy),
        docs=str(docs / "train.jsonl"),
        eval_docs=str(docs / "held.jsonl"),
        output_dir=str(out),
        buckets=[32, 64],
        tokens_per_step=256,  # 8 × 32 or 4 × 64 tokens per step
        num_stages=2,
        stage_documents=15,
        learning_rate=3e-4,
        warmup_steps=2,
        eval_batch_size=16,
        logging_steps=1,
        seed=0,
    )
    values.update(overrides)
    return PretrainConfig(**values)


@pytest.fixture(scope="module")
def straight(tiny_world, docs, tmp_path_factory) -> tuple[Path, dict]:
    """The uninterrupted run: its directory and summary."""
    out = tmp_path_factory.mktemp("pretrain-straight")
    return out, run(config(tiny_world, docs, out))


def assert_same_weights(a_dir: Path, b_dir: Path, path: str) -> None:
    a, b = load_file(a_dir / path), load_file(b_dir / path)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), (path, name)


def metrics(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def trainer_state(out, step: int) -> dict:
    path = out / "checkpoints" / f"step-{step}" / "trainer_state.json"
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_stopped_and_resumed_run_equals_the_uninterrupted_run(tiny_world, docs, straight, tmp_path):
    straight, whole = straight
    stage_steps = [s["steps"] for s in whole["stages"]]
    assert stage_steps == [4, 4]  # the plan this test's stops are placed in
    # save_every 0: a checkpoint at the end of each stage only
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["step-4", "step-8"]

    out = tmp_path / "resumed"
    with pytest.raises(Crash):  # stopped after step 3 was logged; a checkpoint at step 2
        run(config(tiny_world, docs, out, save_every=2), crash_at(3))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]
    assert max(r["step"] for r in metrics(out)) == 3
    assert trainer_state(out, 2)["stage"] == 0 and trainer_state(out, 2)["stage_step"] == 2

    with pytest.raises(Crash):  # resumed at 2; stopped again after step 7 (checkpoints 4, 6)
        run(config(tiny_world, docs, out, save_every=2, resume_from="latest"), crash_at(7))
    assert latest_checkpoint(out).name == "step-6"
    mid = trainer_state(out, 6)
    assert (mid["stage"], mid["stage_step"]) == (1, 2)  # two batches into the second stage
    assert mid["controller"]["weights"] == whole["stages"][0]["weights_next"]  # the moved mix
    end_of_first = trainer_state(out, 4)  # the stage-end checkpoint follows the evaluation
    assert (end_of_first["stage"], end_of_first["stage_step"]) == (1, 0)
    assert end_of_first["stages"][0]["held_out"] == whole["stages"][0]["held_out"]

    # a save interrupted by a crash leaves only a temporary directory: never resumed from,
    # and replaced by the next save of that step
    (out / "checkpoints" / ".step-8.tmp" / "model").mkdir(parents=True)
    resumed = run(config(tiny_world, docs, out, save_every=2, resume_from="latest"))

    for path in ("final/model.safetensors", "checkpoints/step-8/model/model.safetensors"):
        assert_same_weights(straight, out, path)
    # the same lines, in the same order: the stopped runs' tails (steps 3 and 7) were dropped
    assert metrics(out) == metrics(straight)
    assert [r["step"] for r in metrics(out) if "bucket" in r] == list(range(1, 9))
    drop = ("final",)
    assert {k: v for k, v in resumed.items() if k not in drop} == {
        k: v for k, v in whole.items() if k not in drop
    }
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        f"step-{n}" for n in (2, 4, 6, 8)
    ]


@pytest.mark.slow
def test_run_killed_after_a_checkpoint_resumes_exactly(tiny_world, docs, straight, tmp_path):
    """`python recipes/pretrain.py` checkpointing every step, SIGKILLed once `step-3` is
    complete (wherever it then is: training, logging, or halfway through writing `step-4`)."""
    straight, whole = straight
    out = tmp_path / "killed"
    (tmp_path / "run.yaml").write_text(config(tiny_world, docs, out, save_every=1).to_yaml())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    root = Path(__file__).resolve().parents[2]
    with (tmp_path / "stderr.txt").open("w") as stderr:  # a file: a full pipe would block it
        proc = subprocess.Popen(
            [sys.executable, root / "recipes/pretrain.py", "--config", tmp_path / "run.yaml"],
            env=env,
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 600
        while not (out / "checkpoints" / "step-3").exists():
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint step-3 after 600 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert latest_checkpoint(out).name in {"step-3", "step-4"}
    resumed = run(config(tiny_world, docs, out, save_every=1, resume_from="latest"))
    assert_same_weights(straight, out, "final/model.safetensors")
    assert metrics(out) == metrics(straight)
    assert resumed["held_out_after"] == whole["held_out_after"]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_resume_and_fresh_run_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoints to resume from"):
        run(PretrainConfig(output_dir=str(tmp_path), resume_from="latest", model="x", docs="y"))
    with pytest.raises(FileNotFoundError, match="resume_from: .* not a pretraining checkpoint"):
        run(
            PretrainConfig(output_dir=str(tmp_path), resume_from=str(tmp_path), model="x", docs="y")
        )
    (tmp_path / "checkpoints" / "step-3").mkdir(parents=True)  # an earlier run's
    with pytest.raises(ValueError, match="already holds checkpoints.*--resume_from latest"):
        run(PretrainConfig(output_dir=str(tmp_path), model="x", docs="y"))
    with pytest.raises(ValueError, match="save_every"):
        PretrainConfig(save_every=-1)


def test_resuming_under_a_different_config_warns_with_the_fields():
    from dataclasses import asdict

    from align.pretrain.run import warn_config_changes

    saved = asdict(PretrainConfig(learning_rate=1e-4))
    with pytest.warns(UserWarning, match=r"\['learning_rate', 'seed'\]"):
        warn_config_changes(saved, PretrainConfig(learning_rate=2e-4, seed=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these do not change the rest of the run
        warn_config_changes(
            saved, PretrainConfig(learning_rate=1e-4, save_every=3, resume_from="x")
        )


def test_latest_checkpoint_skips_temporary_directories(tmp_path):
    for name in ("step-2", "step-10", ".step-12.tmp", "step-x"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    assert latest_checkpoint(tmp_path).name == "step-10"
