"""Run directories through the real entry points: a fresh run over an earlier run's metrics, a
torn metrics line at resume, a crafted checkpoint given to ``--resume_from``, and ``align
filter`` killed with its default engine-call size."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.core.data import load_records, write_jsonl


def align_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    for name in ("ALIGN_DEBUG", "WORLD_SIZE"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "align.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip()]


def ppo_args(world, out: Path, **overrides) -> list[str]:
    values = dict(
        policy=world.policy,
        critic=world.reward,
        rewards="align.tiny.reward:tiny_world_reward",
        prompts=world.data("prompts"),
        eval_prompts=world.data("eval_prompts"),
        output_dir=out,
        rollout_batch_size=4,
        samples_per_prompt=1,
        max_new_tokens=8,
        total_steps=1,
        ppo_epochs=1,
        num_minibatches=1,
        micro_batch_size=4,
        save_every=1,
        eval_max_prompts=4,
        seed=1,
    )
    values.update(overrides)
    return ["ppo", *(item for k, v in values.items() for item in (f"--{k}", str(v)))]


def steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]


def test_fresh_ppo_run_over_a_killed_first_save_is_refused(tiny_world, tmp_path):
    """The reproducer: a run killed while writing its first checkpoint left metrics of steps
    0 and 1; a fresh run into the directory appended 0, 1, 2 to them."""
    out = tmp_path / "run"
    (out / "checkpoints" / ".step-2.tmp" / "accelerate").mkdir(parents=True)
    before = '{"step": 0, "eval/score": 0.1}\n{"step": 1, "loss/policy_avg": 0.2}\n'
    (out / "metrics.jsonl").write_text(before)
    done = align_cli(*ppo_args(tiny_world, out))
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = error_lines(done)
    assert line.startswith(f"error: output_dir: {out / 'metrics.jsonl'} holds an earlier run's")
    assert "another output_dir" in line
    assert (out / "metrics.jsonl").read_text() == before


def test_fresh_pretraining_run_over_an_earlier_runs_metrics_is_refused(tmp_path):
    from align.pretrain.run import PretrainConfig, run

    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval_loss/all": 3.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl holds an earlier run's metrics"):
        run(PretrainConfig(output_dir=str(tmp_path), model="x", docs="y"))


@pytest.mark.slow
def test_resume_after_a_torn_metrics_line_drops_it_with_a_warning(tiny_world, tmp_path):
    """The reproducer: killed while writing a metrics line after its checkpoint, a run's
    ``--resume_from latest`` failed with a JSON error naming no file."""
    out = tmp_path / "run"
    first = align_cli(*ppo_args(tiny_world, out))
    assert first.returncode == 0, first.stderr[-3000:]
    assert steps(out) == [0, 1]
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "loss/policy_avg": 0.1')  # cut short by the kill
    resumed = align_cli(*ppo_args(tiny_world, out, total_steps=2, resume_from="latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{out / 'metrics.jsonl'}: dropped an incomplete last line" in resumed.stderr
    assert steps(out) == [0, 1, 2]
    assert (out / "checkpoints" / "step-2" / "trainer_state.pt").is_file()


@pytest.mark.slow
def test_deepspeed_zero2_checkpoint_resumes_through_the_data_only_check(tiny_world, tmp_path):
    """DeepSpeed reads its shards with ``weights_only=False``; the check before it must let
    every file of a real ZeRO-2 checkpoint (bf16, 2 CPU processes) through."""
    pytest.importorskip("deepspeed")
    zero2 = Path(__file__).resolve().parents[2] / "recipes" / "accelerate_configs" / "zero2.yaml"
    launch = ["--num-processes", "2", "--accelerate-config", str(zero2)]
    out = tmp_path / "zero2"
    first = align_cli(*ppo_args(tiny_world, out), *launch)
    assert first.returncode == 0, first.stderr[-3000:]
    assert any((out / "checkpoints" / "step-1" / "accelerate").rglob("*optim_states.pt"))
    resumed = align_cli(*ppo_args(tiny_world, out, total_steps=2, resume_from="latest"), *launch)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert steps(out) == [0, 1, 2]


class CreatesAFile:
    """Unpickling this would call ``os.mkdir(path)``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_resume_from_a_crafted_checkpoint_runs_nothing(tiny_world, tmp_path):
    import torch

    crafted = tmp_path / "crafted" / "step-9"
    (crafted / "accelerate").mkdir(parents=True)
    marker = tmp_path / "created-by-the-checkpoint"
    torch.save({"step": 9, "bad_steps": CreatesAFile(marker)}, crafted / "trainer_state.pt")
    done = align_cli(*ppo_args(tiny_world, tmp_path / "run", resume_from=crafted))
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = error_lines(done)
    assert line.startswith(f"error: {crafted / 'trainer_state.pt'}: refused to load")
    assert not marker.exists()


@pytest.fixture(scope="module")
def prompt_file(tiny_world, tmp_path_factory) -> Path:
    """24 prompts: more than one engine call of the default size (16)."""
    rows = load_records(tiny_world.data("prompts"), "prompts").to_list()
    path = tmp_path_factory.mktemp("filter") / "prompts.jsonl"
    write_jsonl(rows[:24], path)
    return path


FILTER = ["--n", "4", "--max-new-tokens", "32", "--keep", "8", "--seed", "5"]


def filter_args(world, prompts: Path, out: Path) -> list[str]:
    return ["filter", "--prompts", str(prompts), "--policy", str(world.policy), "--rewards", "tiny",
            "--out", str(out)]  # fmt: skip


@pytest.mark.slow
def test_filter_killed_loses_at_most_one_default_engine_call(tiny_world, prompt_file, tmp_path):
    straight = align_cli(
        *filter_args(tiny_world, prompt_file, tmp_path / "a" / "kept.jsonl"), *FILTER
    )
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "b" / "kept.jsonl"
    cache = out.with_name("kept_report") / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [sys.executable, "-m", "align.cli", *filter_args(tiny_world, prompt_file, out), *FILTER]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, lines = time.monotonic() + 300, 0
    while lines == 0 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
        files = list(cache.glob("*.jsonl"))
        lines = files[0].read_bytes().count(b"\n") if files else 0
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not out.exists()

    resumed = align_cli(*filter_args(tiny_world, prompt_file, out), *FILTER)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out.with_name("kept_report") / "summary.json").read_text())
    assert (summary["cached"], summary["generated"]) == (16, 8)  # one call of 16 was kept
    assert out.read_bytes() == (tmp_path / "a" / "kept.jsonl").read_bytes()
    (a,) = (tmp_path / "a" / "kept_report" / "cache").glob("*.jsonl")
    (b,) = cache.glob("*.jsonl")
    rows = [
        sorted(map(json.loads, f.read_text().splitlines()), key=lambda r: r["key"]) for f in (a, b)
    ]
    assert rows[0] == rows[1]
