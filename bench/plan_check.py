"""``align plan`` against measured memory: PPO runs on the CPU, plan vs. peak RSS.

    .venv/bin/python bench/plan_check.py [--setups h256-z0,h512-z3] [--steps 2] [--work DIR]

Each set-up is a real PPO run of ``align.ppo`` (``build_trainer`` then ``--steps`` calls of
``ppo_step``: generation with transformers ``generate``, scoring, training) on random-init Llama
models this script saves (policy ``LlamaForCausalLM``; critic and reward model one
``LlamaForSequenceClassification``, 1 label), with the tiny world's tokenizer and prompts, a
reward model as the reward, prompts truncated to exactly ``max_prompt_length`` tokens and
completions that almost never stop early (random models), so the padded widths reach the limits
the plan assumes. ZeRO-0 set-ups run in one process; ZeRO-3 ones under
``accelerate launch --config_file recipes/accelerate_configs/zero3.yaml --num_processes 2``
(bf16 mixed precision, gloo), as the CPU tests launch them.

**Measured** = peak RSS during the PPO steps minus the RSS before any model loads, in the process
with the larger peak. The baseline is taken after every library the run uses is imported (torch,
transformers, TRL, DeepSpeed, align), and the peak is reset (``/proc/self/clear_refs``) after the
models are built, so loading (whose transient peak the plan does not cover) is left out; its peak
is reported beside. glibc's ``malloc`` runs with a fixed mmap threshold
(``MALLOC_MMAP_THRESHOLD_=65536``) so freed tensors leave RSS at once, as freed blocks return to a
GPU caching allocator, instead of staying in glibc's heap.

**Plan** = ``align plan`` for the same config and launch (:func:`align.cli.plan.plan_from_config`),
with ``host`` (a CPU run: DeepSpeed's reduce bucket counted up to the gradient elements ever
written, since untouched pages of an ``empty`` tensor never reach RSS, where a GPU allocates all of
it; no reserve for a CUDA runtime).

Prints one JSON line per set-up (plan and measured bytes, ratio, the plan's peak phase and items)
and a summary line; ``--within`` is the tolerance (0.25).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZERO3 = ROOT / "recipes" / "accelerate_configs" / "zero3.yaml"

#: name: model shape, lengths and batch sizes, launch.
SETUPS = {
    "h256-z0": dict(hidden=256, layers=4, heads=8, kv=4, inter=688, prompt=16, new=240,
                    rollout=16, micro=8, zero3=False),
    "h512-z0": dict(hidden=512, layers=8, heads=8, kv=8, inter=1376, prompt=16, new=112,
                    rollout=8, micro=4, zero3=False),
    "h256-z3": dict(hidden=256, layers=4, heads=8, kv=4, inter=688, prompt=16, new=240,
                    rollout=16, micro=8, zero3=True),
    "h512-z3": dict(hidden=512, layers=8, heads=8, kv=8, inter=1376, prompt=16, new=112,
                    rollout=8, micro=4, zero3=True),
    "h512-z0-ckpt": dict(hidden=512, layers=8, heads=8, kv=8, inter=1376, prompt=16, new=240,
                         rollout=8, micro=4, zero3=False, checkpointing=True),
    "h512-z3-ckpt": dict(hidden=512, layers=8, heads=8, kv=8, inter=1376, prompt=16, new=240,
                         rollout=8, micro=4, zero3=True, checkpointing=True),
}  # fmt: skip
#: Minimal models per launch: what the runtime itself takes beyond the baseline (see the docstring).
FLOORS = {
    False: dict(hidden=64, layers=2, heads=2, kv=2, inter=128, prompt=16, new=16, rollout=4,
                micro=2, zero3=False),
    True: dict(hidden=64, layers=2, heads=2, kv=2, inter=128, prompt=16, new=16, rollout=4,
               micro=2, zero3=True),
}  # fmt: skip
DEFAULT_SETUPS = "h256-z0,h512-z0,h512-z0-ckpt,h256-z3,h512-z3,h512-z3-ckpt"


# --------------------------------------------------------------------------- the measured side


def _status(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


class PhasePeaks:
    """Peak RSS per phase of a PPO step: the peak is read and reset where one phase ends and the
    next begins (generation = ``_generate``; scoring = from there to ``compute_advantages``;
    training = ``train_on``; other = the rest)."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}

    def mark(self, ended: str) -> None:
        self.peaks[ended] = max(self.peaks.get(ended, 0), _status("VmHWM"))
        _reset_peak()

    def wrap(self, obj, name: str, before: str, after: str | None) -> None:
        original = getattr(obj, name)

        def wrapped(*args, **kwargs):
            self.mark(before)
            result = original(*args, **kwargs)
            if after:
                self.mark(after)
            return result

        setattr(obj, name, wrapped)


def worker(config: str, report: str, steps: int) -> None:
    """Build the trainer from ``config``, run ``steps`` PPO steps, write this rank's memory."""
    # every library the run uses, before the baseline: what the plan counts starts after
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl.models  # noqa: F401

    if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        import deepspeed  # noqa: F401
    from align.ppo.config import PPOConfig
    from align.ppo.run import build_trainer

    baseline = _status("VmRSS")
    trainer = build_trainer(PPOConfig.from_sources(config))
    loaded, load_peak = _status("VmRSS"), _status("VmHWM")
    _reset_peak()
    phases = PhasePeaks()
    phases.wrap(trainer, "_generate", "other", "generation")
    phases.wrap(trainer, "compute_advantages", "scoring", None)
    phases.wrap(trainer, "train_on", "other", "training")
    started = time.perf_counter()
    for _ in range(steps):
        trainer.ppo_step()
        trainer.step += 1
    phases.mark("other")
    rank = int(os.environ.get("RANK", "0"))
    row = {
        "rank": rank,
        "baseline": baseline,
        "loaded": loaded,
        "load_peak": load_peak,
        "peak": max(phases.peaks.values()),
        "phase_peaks": {k: v - baseline for k, v in phases.peaks.items()},
        "seconds": time.perf_counter() - started,
    }
    Path(f"{report}.{rank}").write_text(json.dumps(row))


# --------------------------------------------------------------------------- set-ups


def tiny_world(path: str | None):
    from align.tiny.build import TinyWorld, build_tiny_world

    if path:
        return TinyWorld(Path(path))
    return build_tiny_world()[0]


def save_models(world, setup: dict, out: Path) -> tuple[Path, Path]:
    """Random-init policy and scalar-head model (critic and reward) of the set-up's shape."""
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    policy_dir, reward_dir = out / "policy", out / "reward"
    if (reward_dir / "config.json").is_file():
        return policy_dir, reward_dir
    tokenizer = AutoTokenizer.from_pretrained(world.tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=setup["hidden"],
        num_hidden_layers=setup["layers"],
        num_attention_heads=setup["heads"],
        num_key_value_heads=setup["kv"],
        intermediate_size=setup["inter"],
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(policy_dir)
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(reward_dir)
    for directory in (policy_dir, reward_dir):
        tokenizer.save_pretrained(directory)
    return policy_dir, reward_dir


def write_config(world, setup: dict, models: tuple[Path, Path], out: Path) -> Path:
    policy, reward = models
    values = {
        "policy": str(policy),
        "critic": str(reward),
        "rewards": [{"type": "model", "path": str(reward)}],
        "prompts": str(world.data("prompts")),
        "eval_prompts": str(world.data("eval_prompts")),
        "output_dir": str(out / "run"),
        "rollout_batch_size": setup["rollout"],
        "samples_per_prompt": 1,
        "max_prompt_length": setup["prompt"],
        "max_new_tokens": setup["new"],
        "micro_batch_size": setup["micro"],
        "num_minibatches": 1,
        "ppo_epochs": 1,
        "eval_max_prompts": 0,
        "save_every": 0,
        "total_steps": 2,
        "actor_lr": 1e-5,
        "critic_lr": 1e-5,
        "gradient_checkpointing": bool(setup.get("checkpointing")),
    }
    path = out / "ppo.json"  # JSON is YAML
    path.write_text(json.dumps(values, indent=1))
    return path


def measure(name: str, setup: dict, config: Path, out: Path, steps: int) -> list[dict]:
    """Run the set-up in fresh process(es); every rank's memory."""
    report = out / "memory"
    for old in out.glob("memory.*"):
        old.unlink()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "TORCH_EXTENSIONS_DIR": os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions")
        ),
    }
    env.pop("WORLD_SIZE", None)
    script = [str(Path(__file__).resolve()), "--worker", str(config), "--report", str(report),
              "--steps", str(steps)]  # fmt: skip
    if setup["zero3"]:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO3),
                   "--num_processes", "2", *script]  # fmt: skip
    else:
        command = [sys.executable, *script]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{name}: exit {done.returncode}\n{done.stderr[-4000:]}")
    return [json.loads(p.read_text()) for p in sorted(out.glob("memory.*"))]


def reused(out: Path) -> list[dict]:
    """The measurements an earlier run left in ``out`` (``--reuse``: re-plan only)."""
    return [json.loads(p.read_text()) for p in sorted(out.glob("memory.*"))]


def plan(setup: dict, config: Path, reserve: float = 0.0):
    from align.cli.plan import plan_from_config, read_launch

    launch = (
        read_launch(str(ZERO3), 2, None, None) if setup["zero3"] else read_launch(None, 1, 0, None)
    )
    return plan_from_config(str(config), launch=launch, host=True, reserve_gib=reserve / 2**30)


def run_setup(name: str, setup: dict, args) -> tuple[Path, dict]:
    """Measure ``setup`` (or reuse an earlier measurement): its config and the worst rank."""
    out = Path(args.work) / name
    out.mkdir(parents=True, exist_ok=True)
    world = tiny_world(args.tiny)
    models = save_models(world, setup, Path(args.work) / f"models-h{setup['hidden']}")
    config = write_config(world, setup, models, out)
    reuse = args.reuse and any(out.glob("memory.*"))
    ranks = reused(out) if reuse else measure(name, setup, config, out, args.steps)
    worst = max(ranks, key=lambda r: r["peak"] - r["baseline"])
    return config, {**worst, "ranks": ranks}


def runtime_floor(zero3: bool, args) -> dict:
    """The runtime's own memory for a launch: measured peak of a minimal model's run less its
    plan (everything the plan does not model: libraries loaded during the run, thread pools,
    communication), passed to the plans of that launch as their ``reserve``."""
    name = "floor-z3" if zero3 else "floor-z0"
    config, worst = run_setup(name, FLOORS[zero3], args)
    measured = worst["peak"] - worst["baseline"]
    planned = plan(FLOORS[zero3], config).peak
    return {"floor": name, "measured_bytes": measured, "plan_bytes": round(planned),
            "reserve_bytes": max(measured - planned, 0)}  # fmt: skip


def check(name: str, args, floor: dict) -> dict:
    setup = SETUPS[name]
    config, worst = run_setup(name, setup, args)
    measured = worst["peak"] - worst["baseline"]
    planned = plan(setup, config, floor["reserve_bytes"])
    bare = planned.peak - floor["reserve_bytes"]
    ratio = planned.peak / measured
    return {
        "setup": name,
        "plan_bytes": round(planned.peak),
        "measured_bytes": measured,
        "ratio": round(ratio, 3),
        "within": abs(ratio - 1) <= args.within,
        "reserve_bytes": floor["reserve_bytes"],
        "ratio_without_reserve": round(bare / measured, 3),
        "plan_phase": planned.peak_phase,
        "phase_totals": {k: round(v) for k, v in planned.to_json()["phase_totals"].items()},
        "measured_phases": worst.get("phase_peaks"),
        "load_peak_minus_baseline": worst["load_peak"] - worst["baseline"],
        "ranks": worst["ranks"],
        "items": {i.name: round(i.bytes) for i in planned.items},
        "setup_shape": setup,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", default=DEFAULT_SETUPS, help=f"of {', '.join(SETUPS)}")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--work", default="/tmp/align-plan-check")
    parser.add_argument(
        "--tiny",
        default=os.environ.get("ALIGN_TEST_TINY_DIR"),
        help="tiny world directory (tokenizer, prompts); default: build or reuse",
    )
    parser.add_argument("--within", type=float, default=0.25)
    parser.add_argument(
        "--reuse", action="store_true", help="re-plan against the measurements left in --work"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.report, args.steps)
        return
    names = args.setups.split(",")
    floors = {}
    for zero3 in sorted({SETUPS[n]["zero3"] for n in names}):
        floors[zero3] = runtime_floor(zero3, args)
        print(json.dumps(floors[zero3]), flush=True)
    rows = []
    for name in names:
        row = check(name, args, floors[SETUPS[name]["zero3"]])
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {
        "summary": True,
        "all_within": all(r["within"] for r in rows),
        "ratios": {r["setup"]: r["ratio"] for r in rows},
        "ratios_without_reserve": {r["setup"]: r["ratio_without_reserve"] for r in rows},
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
