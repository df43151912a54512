"""Advantage estimators on the tiny world: held-out score, seconds per sample, memory.

    nice -n 10 .venv/bin/python bench/estimators.py [--estimators gae grpo rloo] [--seeds 0 1]
        [--steps 30] [--rollout-batch-size 8] [--samples-per-prompt 4] [--eval-max-prompts 128]
        [--eval-temperature 0] [--out runs/bench-estimators]

Each (estimator, seed) is one run of ``align ppo --config tiny`` (the shipped tiny config: the
tiny world's SFT policy, its rule reward, its held-out prompts) with the same prompts and sample
budget, in a fresh process (so its peak memory is its own), interleaved by seed so that a load
change on the machine hits every estimator alike. Reported per run:

- the held-out score (greedy answers to the first 128 held-out prompts by default) at step 0
  (the SFT policy) and after the last step;
- seconds per sample: the median ``time/step`` (generation, scoring, the no-grad forwards and
  the update; evaluation not counted) over the steps after the first, divided by the samples
  per step (a median, so that a burst of load from other processes moves it less); and the
  part that a critic changes (``time/policy_value_forward + time/train``), likewise;
- memory: the process's peak resident set (``ru_maxrss``) and the bytes of the trained state
  (parameters + gradients + AdamW moments of actor and critic) at the end.

Prints one JSON line per run, then a Markdown table of the means over seeds.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path


def trained_state_bytes(trainer) -> int:
    """Bytes of the trainer's parameters, gradients and optimizer state tensors."""
    params = list(trainer.model.parameters())
    total = sum(p.numel() * p.element_size() for p in params)
    total += sum(p.numel() * p.element_size() for p in params if p.requires_grad)  # gradients
    for state in trainer.optimizer.state_dict()["state"].values():
        total += sum(t.numel() * t.element_size() for t in state.values() if hasattr(t, "numel"))
    return total


def one_run(estimator: str, seed: int, args) -> dict:
    """Train one configuration in this process; returns its measurements."""
    from align.ppo.config import PPOConfig  # lazy: only the child process trains
    from align.ppo.run import build_trainer  # lazy: only the child process trains

    out = Path(args.out) / f"{estimator}-seed{seed}"
    overrides = [
        f"--advantage_estimator={estimator}",
        f"--seed={seed}",
        f"--output_dir={out}",
        f"--total_steps={args.steps}",
        f"--rollout_batch_size={args.rollout_batch_size}",
        f"--samples_per_prompt={args.samples_per_prompt}",
        "--save_every=0",
        f"--eval_max_prompts={args.eval_max_prompts}",
        f"--eval_temperature={args.eval_temperature}",
    ]
    trainer = build_trainer(PPOConfig.from_sources("tiny", overrides))
    trainer.train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    scores = [r["eval/score"] for r in rows if "eval/score" in r]
    steps = [r for r in rows if "time/step" in r][1:]  # the first step warms up
    per_step = args.rollout_batch_size * args.samples_per_prompt
    model_time = [r["time/policy_value_forward"] + r["time/train"] for r in steps]
    return {
        "estimator": estimator,
        "seed": seed,
        "score_before": scores[0],
        "score_after": scores[-1],
        "s_per_sample": statistics.median(r["time/step"] for r in steps) / per_step,
        "s_per_sample_forward_train": statistics.median(model_time) / per_step,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trained_state_mb": trained_state_bytes(trainer) / 2**20,
        "params": trainer.param_counts,
    }


def table(results: list[dict]) -> str:
    """Means over seeds per estimator, as Markdown."""
    lines = [
        "| estimator | held-out score SFT → after (per seed) | mean gain | s/sample | "
        "s/sample forward+train | peak RSS MB | trained state MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["estimator"] for r in results):
        runs = [r for r in results if r["estimator"] == name]

        def mean(key: str, runs=runs) -> float:
            return statistics.mean(r[key] for r in runs)

        per_seed = ", ".join(f"{r['score_before']:.4f} → {r['score_after']:.4f}" for r in runs)
        gain = statistics.mean(r["score_after"] - r["score_before"] for r in runs)
        lines.append(
            f"| {name} | {per_seed} | {gain:+.4f} | {mean('s_per_sample'):.3f} | "
            f"{mean('s_per_sample_forward_train'):.3f} | {mean('peak_rss_mb'):.0f} | "
            f"{mean('trained_state_mb'):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimators", nargs="+", default=["gae", "grpo", "rloo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rollout-batch-size", type=int, default=8)
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--eval-max-prompts", type=int, default=128)
    parser.add_argument("--eval-temperature", type=float, default=0.0)
    parser.add_argument("--out", default="runs/bench-estimators")
    parser.add_argument("--one", nargs=2, metavar=("ESTIMATOR", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(args.one[0], int(args.one[1]), args)), flush=True)
        return
    passed = sys.argv[1:]
    results = []
    for seed in args.seeds:
        for estimator in args.estimators:
            done = subprocess.run(
                [sys.executable, __file__, *passed, "--one", estimator, str(seed)],
                capture_output=True,
                text=True,
            )
            lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.exit(f"{estimator} seed {seed} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(lines[-1].removeprefix("RESULT ")))
            print(json.dumps(results[-1]), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
