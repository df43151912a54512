"""Sampling logprobs during generation: align's GenerateEngine vs keeping the logits.

The peer is what TRL 0.24's PPO did: ``generate(output_scores/logits=True)`` keeps a
``[B, V]`` tensor per step, then a log-softmax over all of them picks one logprob per token.
``GenerateEngine`` gathers each sampled token's logprob as it goes and keeps one step's
distribution. Both sample the same tokens (same seed); the script checks the logprobs agree.

Each variant runs in its own process so peak RSS is its own. Prints one JSON line per variant:

    python bench/rollout_logprobs.py [--prompts 64] [--new-tokens 128] [--vocab 32000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from rollouts.base import SamplingParams, left_pad
from rollouts.hf_generate import GenerateEngine


def build_model(vocab: int):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        pad_token_id=0,
        eos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


def prompts(n: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(2, vocab, (16 + i % 17,), generator=g).tolist() for i in range(n)]


def run_align(model, batch, new_tokens):
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=0.7, seed=0)
    out = GenerateEngine(model, 0, 1).generate(batch, sampling)
    return out.completion_ids, out.logprobs


@torch.no_grad()
def run_peer(model, batch, new_tokens):
    ids, mask = left_pad(batch, 0)
    torch.manual_seed(0)
    model.generation_config = GenerationConfig()
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        return_dict_in_generate=True,
        output_logits=True,
        generation_config=GenerationConfig(
            max_new_tokens=new_tokens,
            do_sample=True,
            temperature=0.7,
            top_p=1.0,
            top_k=0,
            pad_token_id=0,
            eos_token_id=1,
        ),
    )
    tokens = out.sequences[:, ids.shape[1] :]
    logits = torch.stack(out.logits, dim=1).float() / 0.7  # [B, T, V]
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
    return tokens.tolist(), logprobs.tolist()


def child(args) -> None:
    torch.set_num_threads(args.threads)
    model = build_model(args.vocab)
    batch = prompts(args.prompts, args.vocab)
    run = run_align if args.variant == "align" else run_peer
    run(model, batch[:2], 4)  # warm-up
    started = time.perf_counter()
    tokens, logprobs = run(model, batch, args.new_tokens)
    seconds = time.perf_counter() - started
    generated = sum(len(t) for t in tokens)
    print(
        json.dumps(
            {
                "variant": args.variant,
                "prompts": args.prompts,
                "new_tokens": args.new_tokens,
                "vocab": args.vocab,
                "seconds": round(seconds, 3),
                "tokens_per_s": round(generated / seconds, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "first_logprobs": [round(x, 5) for x in logprobs[0][:4]],
                "first_tokens": tokens[0][:4],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", choices=["align", "peer"])
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    rows = []
    for variant in ("peer", "align"):
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--prompts",
            str(args.prompts),
            "--new-tokens",
            str(args.new_tokens),
            "--vocab",
            str(args.vocab),
            "--threads",
            str(args.threads),
        ]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
        rows.append(json.loads(line.splitlines()[-1]))
        print(line.splitlines()[-1], flush=True)
    peer, ours = rows
    same = peer["first_tokens"] == ours["first_tokens"] and all(
        abs(a - b) < 1e-4 for a, b in zip(peer["first_logprobs"], ours["first_logprobs"])
    )
    print(
        json.dumps(
            {
                "speedup": round(peer["seconds"] / ours["seconds"], 2),
                "peak_rss_ratio": round(ours["peak_rss_mb"] / peer["peak_rss_mb"], 2),
                "same_samples_and_logprobs": same,
            }
        )
    )


if __name__ == "__main__":
    main()
