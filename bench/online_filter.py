"""PPO with the online filter on vs off at the same number of generated samples (tiny world).

    nice -n 10 .venv/bin/python bench/online_filter.py [--seeds 0 1] [--steps 16] [--n 4]
        [--estimator gae]   # or grpo, rloo, ...: the advantage_estimator of both arms

Both arms start from the tiny world's SFT policy and reward model (critic) with the shipped tiny
PPO config (``align/configs/ppo_tiny.yaml``: lengths, learning rates, β) except
``samples_per_prompt`` = n and ``rollout_batch_size`` = 32 / n (the same 32 samples per step).
Off: ``--steps`` PPO steps, ``steps × 32`` generated samples. On: ``online_filter.enabled`` with
its defaults (drop groups whose n scores are all equal, refill up to ``rollout_batch_size``
extra prompts in ≤ 4 rounds, backfill the rest), run step by step within the off arm's
samples: each step's refill budget is cut to what is left, and the arm stops when less than an
unfiltered step is left (so it generates at most as many samples; both counts are reported).

Held-out score: ``eval/score`` of the trainer's own evaluation over the first
``--eval-per-category`` held-out prompts of each of the 6 categories, sampled at the tiny
config's ``eval_temperature`` from a fixed seed and scored by the tiny world's rule, before and
after. One JSON line per run, then a summary line; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from align.core.data import load_records, write_jsonl
from align.ppo.config import PPOConfig
from align.ppo.run import build_trainer
from align.tiny.build import build_tiny_world
from rm.spec import tiny_reward


def held_out(world, root: Path, per_category: int) -> Path:
    """The first ``per_category`` held-out prompts of each category (the file is grouped by
    category, so its first N would be one category)."""
    rows, seen = [], Counter()
    for row in load_records(world.data("eval_prompts"), "prompts").to_list():
        seen[row["category"]] += 1
        if seen[row["category"]] <= per_category:
            rows.append(row)
    path = root / "eval.jsonl"
    write_jsonl(rows, path)
    return path


def config(world, out: Path, seed: int, args, filtered: bool) -> PPOConfig:
    overrides = [
        f"--output_dir={out}",
        f"--seed={seed}",
        f"--samples_per_prompt={args.n}",
        f"--rollout_batch_size={32 // args.n}",
        f"--total_steps={args.steps}",
        "--save_every=0",
        f"--eval_max_prompts={6 * args.eval_per_category}",
        f"--online_filter.enabled={str(filtered).lower()}",
        f"--advantage_estimator={args.estimator}",
    ]
    cfg = PPOConfig.from_sources("tiny", overrides)
    cfg.policy, cfg.critic, cfg.rewards = str(world.policy), str(world.reward), tiny_reward()
    cfg.prompts, cfg.eval_prompts = str(world.data("prompts")), str(out.parent / "eval.jsonl")
    return cfg


def run_arm(world, root: Path, seed: int, args, filtered: bool, budget: int | None) -> dict:
    """Train one arm; ``budget``: generated samples to reach (None: ``args.steps`` steps)."""
    out = root / f"seed{seed}-{'on' if filtered else 'off'}"
    trainer = build_trainer(config(world, out, seed, args, filtered))
    before = trainer.evaluate()["eval/score"]
    generated, steps, started = 0, 0, time.perf_counter()
    totals: dict[str, float] = {}
    per_step = 32  # samples of an unfiltered step
    while (budget is None and steps < args.steps) or (
        budget is not None and budget - generated >= per_step
    ):
        if budget is not None:  # refills only within what is left of the off arm's samples
            left = (budget - generated - per_step) // args.n
            trainer.online_filter.max_extra = min(32 // args.n, left)
        metrics = trainer.ppo_step()
        trainer.step += 1
        steps += 1
        generated += int(metrics.get("filter/generated", per_step))
        print(f"seed {seed} filter {filtered}: step {steps}, {generated} samples", file=sys.stderr)
        for k, v in metrics.items():
            if k.startswith("filter/") and k not in ("filter/std_floor", "filter/rounds"):
                totals[k] = totals.get(k, 0.0) + v
    after = trainer.evaluate()
    return {
        "seed": seed,
        "estimator": args.estimator,
        "filter": filtered,
        "steps": steps,
        "generated_samples": generated,
        "eval_score_before": before,
        "eval_score_after": after["eval/score"],
        "eval_by_category": {
            k.split("/")[-1]: v for k, v in after.items() if k.startswith("eval/score/")
        },
        "filter_totals": {k: v for k, v in totals.items() if k.count("/") == 1},
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=16, help="PPO steps of the off arm")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt (divides 32)")
    parser.add_argument("--eval-per-category", type=int, default=20)
    parser.add_argument("--estimator", default="gae", help="advantage_estimator of both arms")
    args = parser.parse_args()
    world, _ = build_tiny_world()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        held_out(world, Path(tmp), args.eval_per_category)
        for seed in args.seeds:
            off = run_arm(world, Path(tmp), seed, args, False, None)
            print(json.dumps(off, ensure_ascii=False), flush=True)
            on = run_arm(world, Path(tmp), seed, args, True, off["generated_samples"])
            print(json.dumps(on, ensure_ascii=False), flush=True)
            rows += [off, on]

    def mean_of(filtered: bool, key: str) -> float:
        return statistics.mean(r[key] for r in rows if r["filter"] == filtered)

    summary = {
        "summary": True,
        **{
            f"{arm}_{key}": mean_of(filtered, key)
            for arm, filtered in (("off", False), ("on", True))
            for key in ("eval_score_after", "generated_samples", "steps")
        },
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
