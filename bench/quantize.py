"""``align export --quantize``: size on disk and held-out perplexity of the tiny world's policy,
float vs int8 (per channel) vs int4 (groups of 32 and 16).

    python bench/quantize.py [--world /tmp/align-tiny] [--out /tmp/align-quant-bench] [--vllm]

Prints one JSON line per export: the safetensors bytes, and the perplexity of the held-out
preference pairs' chosen answers (``data/eval_prefs.jsonl``, prompt and answer in the world's
chat format, answer tokens only) under the exported model loaded back with transformers (the
quantized ones decompressed by compressed-tensors). Round-to-nearest, no calibration; CPU only.
``--vllm`` also loads each export in vLLM (bfloat16: vLLM's CPU int4 kernel takes no float32)
and reports the same perplexity from its prompt logprobs, or that it does not load.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.core.data import messages_of
from align.core.io import read_jsonl
from align.export.write import export_model
from align.tiny.build import build_tiny_world

VARIANTS = [("none", 128), ("int8", 128), ("int4", 32), ("int4", 16)]  # 128 does not divide 352


def answer_batches(tokenizer, rows: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids [1, T], labels [1, T]) per row: the chat-formatted prompt and chosen answer, the
    prompt's positions masked (-100)."""
    batches = []
    for row in rows:
        prompt = messages_of(row)
        head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(row["chosen"] + tokenizer.eos_token, add_special_tokens=False)[
            "input_ids"
        ]
        ids = torch.tensor([head_ids + answer_ids])
        labels = ids.clone()
        labels[0, : len(head_ids)] = -100
        batches.append((ids, labels))
    return batches


@torch.no_grad()
def perplexity(model, batches) -> float:
    """exp(mean answer-token negative log-likelihood) over ``batches``."""
    nll, count = 0.0, 0
    for ids, labels in batches:
        logits = model(ids).logits[0, :-1].float()
        target = labels[0, 1:]
        keep = target != -100
        nll += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
        count += int(keep.sum())
    return math.exp(nll / count)


def vllm_perplexity(directory: Path, batches) -> float | str:
    """The answer-token perplexity under vLLM (prompt logprobs, bfloat16); the error's first
    line when the engine does not start (vLLM's CPU backend has no int8 weight-only kernel)."""
    from vllm import LLM, SamplingParams  # lazy: vllm only with --vllm

    try:
        llm = LLM(model=str(directory), dtype="bfloat16", enforce_eager=True,
                  gpu_memory_utilization=0.05)  # fmt: skip
    except Exception as error:  # the engine core's cause is in its log, not in the exception
        return f"does not load: {str(error).splitlines()[0]}"
    prompts = [{"prompt_token_ids": ids[0].tolist()} for ids, _ in batches]
    outputs = llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0))
    nll, count = 0.0, 0
    for output, (ids, labels) in zip(outputs, batches):
        for position in range(1, ids.shape[1]):
            if labels[0, position] != -100:
                nll -= output.prompt_logprobs[position][int(ids[0, position])].logprob
                count += 1
    del llm
    return round(math.exp(nll / count), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", default="/tmp/align-tiny")
    parser.add_argument("--out", default="/tmp/align-quant-bench")
    parser.add_argument("--vllm", action="store_true", help="also measure under vLLM (CPU)")
    args = parser.parse_args()
    world, _ = build_tiny_world(Path(args.world))
    tokenizer = AutoTokenizer.from_pretrained(world.policy)
    rows = read_jsonl(Path(args.world) / "data" / "eval_prefs.jsonl")
    batches = answer_batches(tokenizer, rows)
    base = None
    for quantize, group_size in VARIANTS:
        name = quantize if quantize != "int4" else f"int4-g{group_size}"
        out = Path(args.out) / name
        start = time.perf_counter()
        export_model(world.policy, out, overwrite=True, quantize=quantize, group_size=group_size)
        seconds = time.perf_counter() - start
        model = AutoModelForCausalLM.from_pretrained(out).eval()
        ppl = perplexity(model, batches)
        size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
        base = base or (size, ppl)
        record = {
            "export": name,
            "safetensors_bytes": size,
            "size_vs_float": round(size / base[0], 3),
            "held_out_ppl": round(ppl, 4),
            "ppl_change_pct": round(100 * (ppl / base[1] - 1), 2),
            "answer_tokens": sum(int((lab != -100).sum()) for _, lab in batches),
            "export_seconds": round(seconds, 2),
        }
        if args.vllm:
            record["vllm_held_out_ppl_bf16"] = vllm_perplexity(out, batches)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":  # vLLM spawns processes
    main()
