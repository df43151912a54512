"""Throughput of `align filter` sampling + scoring per rollout engine, on the tiny world.

    python bench/filter_throughput.py --engines hf vllm --prompts 192 --n 8 --batch-sizes 64

Prints one JSON line per (engine, batch size): prompts/s over sampling and scoring (engine
start-up excluded and reported apart), the time in generate and in the reward, and the generated
tokens/s. Same policy (the tiny world's SFT policy), same prompts, same sampling, the tiny rule
reward, no cache. Timings on a shared CPU box are only comparable side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

# The project's modules are imported inside the functions below, after these are set:
# huggingface_hub reads HF_HUB_OFFLINE when it loads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _prompt_subset(source: Path, count: int, folder: Path) -> Path:
    """The first ``count`` prompts, round-robin over categories so every sub-domain is present."""
    from align.core.data import load_records  # lazy: after the environment above is set

    by_category: dict[str, list] = {}
    for r in load_records(source, "prompts").to_list():
        by_category.setdefault(r["category"], []).append(r)
    rows, k = [], 0
    while len(rows) < count:
        for c in sorted(by_category):
            if k < len(by_category[c]) and len(rows) < count:
                rows.append({f: v for f, v in by_category[c][k].items() if v is not None})
        k += 1
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _measure(engine_kind: str, batch_size: int, args, prompts: Path, policy: Path, out: Path):
    # lazy: after the environment above is set
    from align.filter.run import FilterConfig, build_engine, load_tokenizer, run_filter
    from rollouts.config import RolloutConfig, VLLMOptions

    vllm_options = json.loads(args.engine_options) if engine_kind != "hf" else {}
    cfg = FilterConfig(
        prompts=str(prompts),
        policy=str(policy),
        rewards=[{"type": "rule", "rule": "tiny"}],
        rollout=RolloutConfig(engine=engine_kind, vllm=VLLMOptions(**vllm_options)),
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        batch_size=batch_size,
        use_cache=False,
        out=str(out / f"{engine_kind}-{batch_size}.jsonl"),
    )
    started = time.perf_counter()
    engine = build_engine(cfg, load_tokenizer(cfg.policy))
    start_s = time.perf_counter() - started
    run_filter(cfg, engine=engine)  # warm-up (first-call compilation, allocator)
    result = run_filter(cfg, engine=engine)
    tokens = result.generated_tokens
    close = getattr(engine, "close", None)
    if close:
        close()
    t = result.timing
    return {
        "bench": "filter_throughput",
        "engine": engine_kind,
        "batch_size": batch_size,
        "prompts": result.n_prompts,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "prompts_per_s": round(t["prompts_per_s"], 3),
        "samples_per_s": round(t["prompts_per_s"] * args.n, 2),
        "tokens_per_s": round(tokens / t["generate_s"], 1) if tokens else None,
        "generate_s": round(t["generate_s"], 3),
        "score_s": round(t["score_s"], 3),
        "engine_start_s": round(start_s, 2),
        "threads": _threads(),
    }


def _threads() -> int:
    import torch  # lazy: after the environment above is set

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", default=["hf"], help="hf, vllm, vllm-server")
    parser.add_argument("--prompts", type=int, default=192)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    parser.add_argument(
        "--engine-options", default="{}", help="JSON rollout.vllm options of vLLM engines."
    )
    args = parser.parse_args()
    from align.tiny.build import build_tiny_world  # lazy: after the environment above is set

    world, _ = build_tiny_world()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prompts = _prompt_subset(world.data("prompts"), args.prompts, folder)
        for kind in args.engines:
            for batch_size in args.batch_sizes:
                row = _measure(kind, batch_size, args, prompts, world.policy, folder)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
