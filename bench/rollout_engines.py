"""Rollout throughput: colocated vLLM vs transformers ``generate``, and weight-sync time.

    .venv/bin/python bench/rollout_engines.py [--prompts 16 64 256] [--new-tokens 32] [--repeats 3]
                                       [--vllm-dtype float32] [--no-server]

Model: a random-init "tiny-256" Llama policy (hidden 256, 4 layers, 8 heads, 4 KV heads, MLP 688,
the tiny world's tokenizer and vocabulary), fp32, saved once to a temporary directory. Prompts:
16-32 random tokens; each is answered once at temperature 0.7 (top-p 1) with ``--new-tokens``
new tokens (a random model rarely emits EOS, so nearly every row runs to the limit; tokens/s
counts the tokens actually generated). Both engines live in this one process and take turns
(warm-up call, then ``--repeats`` timed calls each, alternating), so other load on the machine
slows both alike; ``generate`` gets all prompts in one batch. Sync: ``sync_weights`` of the
policy into the vLLM engine, in place (``--repeats`` × 2 timings, after a first untimed one), and,
unless ``--no-server``, into a vLLM server on 127.0.0.1 by gloo broadcast and by a weights file.

Prints one JSON line per (engine, prompts), one for sync, then a summary with the vLLM/generate
tokens/s ratio per prompt count.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from align.tiny.build import build_tiny_world
from rollouts.base import SamplingParams
from rollouts.factory import make_engine
from rollouts.vllm_server import VLLMServerEngine

# before vLLM loads (it does only when an engine starts)
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vLLM logs to stdout otherwise; keep it JSON


def build_policy(out: Path, tokenizer) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return model


def make_prompts(n: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(n)
    return [torch.randint(3, vocab, (16 + i % 17,), generator=g).tolist() for i in range(n)]


def timed_generate(engine, prompts, sampling) -> tuple[float, int]:
    started = time.perf_counter()
    batch = engine.generate(prompts, sampling)
    return time.perf_counter() - started, sum(len(c) for c in batch.completion_ids)


def bench_prompts(engines: dict, n: int, vocab: int, sampling, repeats: int) -> list[dict]:
    prompts = make_prompts(n, vocab)
    for engine in engines.values():  # warm-up
        timed_generate(engine, prompts, sampling)
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, engine in engines.items():
            runs[name].append(timed_generate(engine, prompts, sampling))
    rows = []
    for name, timings in runs.items():
        seconds = statistics.median(t for t, _ in timings)
        tokens = statistics.median(k for _, k in timings)
        rows.append(
            {
                "engine": name,
                "prompts": n,
                "median_s": round(seconds, 3),
                "tokens": tokens,
                "tokens_per_s": round(tokens / seconds, 1),
            }
        )
    return rows


def bench_sync(engine, model, repeats: int, kind: str = "vllm", sync: str = "in-place") -> dict:
    engine.sync_weights(model)
    times = []
    for _ in range(2 * repeats):
        with torch.no_grad():
            next(model.parameters()).add_(1e-3)  # a real change each time
        engine.sync_weights(model)
        times.append(engine.last_sync_seconds)
    params = sum(p.numel() for p in model.parameters())
    return {
        "engine": kind,
        "sync": sync,
        "params": params,
        "median_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
    }


def bench_server_sync(model_dir: str, model, tokenizer, dtype: str, repeats: int) -> list[dict]:
    """Sync into one server through both transports (two clients of the same server)."""
    server = make_engine("vllm-server", model_dir, tokenizer, dtype=dtype, max_model_len=512)
    try:
        rows = []
        for transport in ("gloo", "file"):
            options = dataclasses.replace(server.options, weight_sync=transport)
            client = VLLMServerEngine(options, server.eos_token_ids)
            rows.append(bench_sync(client, model, repeats, "vllm-server", transport))
            client.close()
        return rows
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vllm-dtype", default="float32")
    parser.add_argument("--no-server", action="store_true", help="skip the server sync timings")
    args = parser.parse_args()

    world, _ = build_tiny_world()
    tokenizer = AutoTokenizer.from_pretrained(world.tokenizer)
    with tempfile.TemporaryDirectory(prefix="bench-rollouts-") as tmp:
        model = build_policy(Path(tmp), tokenizer)
        engines = {
            "generate": make_engine("hf", model, tokenizer),
            "vllm": make_engine(
                "vllm", tmp, tokenizer, dtype=args.vllm_dtype, max_model_len=512
            ),
        }
        sampling = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.7, seed=0)
        ratios = {}
        for n in args.prompts:
            rows = bench_prompts(engines, n, len(tokenizer), sampling, args.repeats)
            for row in rows:
                print(json.dumps({**row, "vllm_dtype": args.vllm_dtype}), flush=True)
            by_engine = {r["engine"]: r["tokens_per_s"] for r in rows}
            ratios[n] = round(by_engine["vllm"] / by_engine["generate"], 2)
        print(json.dumps(bench_sync(engines["vllm"], model, args.repeats)), flush=True)
        engines["vllm"].close()
        if not args.no_server:
            for row in bench_server_sync(tmp, model, tokenizer, args.vllm_dtype, args.repeats):
                print(json.dumps(row), flush=True)
        print(json.dumps({"summary": "vllm_over_generate_tokens_per_s", **ratios}), flush=True)


if __name__ == "__main__":
    main()
