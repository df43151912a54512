"""MCQ scoring cost: generate + extract (FinanceIQ's way) vs next-token log-likelihood.

    .venv/bin/python bench/eval_mcq.py [--policy DIR] [--data DIR] [--split test-sample]
        [--shots 0] [--limit 4] [--max-new-tokens 16] [--max-length 368] [--repeats 3]

Both scorings run on the same model (default: the tiny world's policy) and the same prompts
(``--limit`` questions of each category), taking turns ``--repeats`` times after one warm-up
each, so other load on the machine slows both alike. Prints one JSON line per scoring (median
seconds, questions/s, macro accuracy) and a summary line with ``loglik_speedup`` (ratio of the
medians).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from align.tiny.build import build_tiny_world
from eval.gsb_run import load_policy
from eval.mcq_run import MCQConfig, evaluate_mcq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=None)
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data" / "financeiq"
    parser.add_argument("--data", default=str(default_data))
    parser.add_argument("--split", default="test-sample")
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=368)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    policy = args.policy
    if policy is None:
        policy = str(build_tiny_world(None)[0].policy)
    model, tokenizer = load_policy(policy)
    configs = {
        scoring: MCQConfig(
            data=args.data, split=args.split, shots=args.shots, scoring=scoring,
            max_new_tokens=args.max_new_tokens, max_length=args.max_length, limit=args.limit,
        )  # fmt: skip
        for scoring in ("generate", "loglik")
    }
    times = {k: [] for k in configs}
    results = {}
    for k, cfg in configs.items():  # warm-up
        results[k] = evaluate_mcq(model, tokenizer, cfg)[k]
    for _ in range(args.repeats):
        for k, cfg in configs.items():
            start = time.perf_counter()
            evaluate_mcq(model, tokenizer, cfg)
            times[k].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    for k, median in medians.items():
        n = results[k].n
        print(json.dumps({
            "scoring": k, "questions": n, "median_s": round(median, 3),
            "questions_per_s": round(n / median, 2), "macro_accuracy": round(results[k].macro, 4),
            "no_answer": sum(c["no_answer"] for c in results[k].per_category.values()),
        }))  # fmt: skip
    print(json.dumps({
        "summary": True, "policy": policy, "shots": args.shots,
        "loglik_speedup": round(medians["generate"] / medians["loglik"], 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
