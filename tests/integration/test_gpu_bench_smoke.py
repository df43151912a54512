"""``bench/gpu_ppo.py`` is ready for a GPU machine that has torch, transformers, accelerate and
peft only: in a process where trl, datasets, deepspeed, vllm, pandas and pyarrow cannot be
imported, its smoke mode reports vLLM as not run and runs PPO steps with ``generate``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ABSENT = ("trl", "datasets", "deepspeed", "vllm", "pandas", "pyarrow")

SCRIPT = f"""
import json, sys
for name in {ABSENT!r}:
    sys.modules[name] = None  # as if not installed: import fails, find_spec() is None
sys.path.insert(0, {str(ROOT / "bench")!r})
import gpu_ppo
from pathlib import Path
work = Path(sys.argv[1])
gpu_ppo.main(["--device", "cpu", "--shape", "tiny", "--engine", "vllm", "--workdir", str(work)])
model, _ = gpu_ppo.build_model("tiny", work, "cpu")
spec = dict(shape="tiny", engine="hf", model=str(model), reward=str(gpu_ppo.reward_dir(model)),
            prompts=str(work / "prompts.jsonl"), steps=2, device="cpu", rollout=4,
            max_new_tokens=4, output_dir=str(work / "run"))
print(json.dumps(gpu_ppo.child_run(spec)))
print(json.dumps({{"loaded": [m for m in {ABSENT!r} if sys.modules.get(m) is not None]}}))
"""


@pytest.mark.slow
def test_smoke_mode_runs_without_trl_datasets_deepspeed_or_vllm(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    not_run, summary, run, loaded = lines
    assert not_run["status"] == "not run" and "vllm" in not_run["reason"]
    assert summary["summary"] and summary["runs_ok"] == 0 and summary["versions"]["vllm"] is None
    assert run["status"] == "ok" and run["steps"] == 2 and run["engine"] == "hf"
    assert 0 < run["completion_tokens_per_step"] <= 4 * 4
    assert run["tokens_per_s"]["generate"] > 0 and run["seconds_per_phase"]["train"] > 0
    assert run["logprob_gap_max"] < 1e-4  # generate's logprobs vs the trainer's forward
    assert loaded == {"loaded": []}
