"""Bucketing vs fixed-length concatenation on a synthetic log-normal corpus (paper Table 1).

    python bench/bucketing.py [--documents 100000] [--sigma 1.1] [--seed 0]

Prints one JSON line per method: padding / truncation ratios (percent), concatenation ratio
(documents per instance), instance counts, the seconds the composition took, and the paper's numbers
where it reports them (docs/methods.md §5: from secondary summaries of arXiv 2407.07495). The
corpus: document lengths ~ round(LogNormal(μ, σ)) with μ = ln(1000) − σ²/2 (mean 1000 tokens); σ =
1.1 puts Fixed-2048's truncation near the paper's. The paper's corpus is not public, so only the
pattern is comparable: concatenation ≈ L / mean, truncation roughly halving as L doubles, and the
bucketed method under 1% for both padding and truncation.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from align.pretrain.bucketing import (
    BucketConfig,
    bucket_documents,
    fixed_length_chunks,
    plan_metrics,
)

PAPER = {  # pad %, trunc %, concat
    "fixed-2048": (0.01, 38.39, 2.05),
    "fixed-16384": (0.08, 5.96, 16.40),
    "bucket": (0.12, 0.28, 2.81),
}


def corpus(n: int, sigma: float, seed: int, mean: float = 1000.0) -> list[int]:
    rng = np.random.default_rng(seed)
    mu = np.log(mean) - sigma**2 / 2
    return np.maximum(1, np.rint(rng.lognormal(mu, sigma, n))).astype(int).tolist()


def row(name: str, plan, n_docs: int, seconds: float, mean: float) -> dict:
    m = plan_metrics(plan, n_docs)
    out = {
        "method": name,
        "padding_pct": round(100 * m.padding_ratio, 3),
        "truncation_pct": round(100 * m.truncation_ratio, 3),
        "concatenation": round(m.concatenation_ratio, 3),
        "instances": m.instances,
        "instances_per_bucket": m.as_dict()["instances_per_bucket"],
        "seconds": round(seconds, 3),
        "mean_doc_tokens": round(mean, 1),
    }
    if name in PAPER:
        pad, tru, cat = PAPER[name]
        out["paper"] = {"padding_pct": pad, "truncation_pct": tru, "concatenation": cat}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--sigma", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pad-threshold", type=float, default=0.1)
    parser.add_argument("--pool-size", type=int, default=10_000)
    args = parser.parse_args()
    lengths = corpus(args.documents, args.sigma, args.seed)
    mean = sum(lengths) / len(lengths)
    for size in (2048, 4096, 8192, 16384):
        start = time.perf_counter()
        plan = fixed_length_chunks(lengths, size)
        print(
            json.dumps(row(f"fixed-{size}", plan, len(lengths), time.perf_counter() - start, mean))
        )
    cfg = BucketConfig(pad_threshold=args.pad_threshold, pool_size=args.pool_size)
    start = time.perf_counter()
    plan = bucket_documents(lengths, cfg)
    print(json.dumps(row("bucket", plan, len(lengths), time.perf_counter() - start, mean)))


if __name__ == "__main__":
    main()
