"""Peak memory of one PPO micro-batch's forward and backward, with or without gradient
checkpointing; run in a fresh process so nothing earlier has raised its peak RSS:

    python tests/integration/ckpt_memory_probe.py on|off [--layers 4]

Actor (``LlamaForCausalLM``) and critic (``LlamaForSequenceClassification``) of hidden 512, in
:class:`align.ppo.trainer.ActorCritic` with checkpointing enabled as the trainer does it; 2 rows
of 256 prompt + 256 completion tokens (512 each); the PPO policy and value losses. Prints one
JSON line: RSS just before the forward, peak RSS after the backward, and the peak the forward
and backward added, in MiB. The peak is ``VmHWM``, this process image's own high-water mark:
``ru_maxrss`` survives ``exec`` and so starts at the RSS of the process that forked this one
(a test runner holding models).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from align.core import core_algos as ca
from align.ppo.trainer import ActorCritic, Experience

ROWS, PROMPT, COMPLETION = 2, 256, 256


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak), MiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(x for x in status if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def build(layers: int) -> ActorCritic:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=1024,
        pad_token_id=0,
        num_labels=1,
    )
    return ActorCritic(LlamaForCausalLM(config), LlamaForSequenceClassification(config)).train()


def experience() -> Experience:
    gen = torch.Generator().manual_seed(1)
    width = PROMPT + COMPLETION
    ids = torch.randint(3, 1024, (ROWS, width), generator=gen)
    attention = torch.ones(ROWS, width, dtype=torch.long)
    mask = torch.ones(ROWS, COMPLETION, dtype=torch.bool)
    old = -torch.rand(ROWS, COMPLETION, generator=gen) * 5
    return Experience(
        input_ids=ids,
        attention_mask=attention,
        position_ids=torch.arange(width).expand(ROWS, width),
        mask=mask,
        old_logprobs=old,
        ref_logprobs=old,
        values=torch.randn(ROWS, COMPLETION, generator=gen),
        scores=torch.zeros(ROWS),
        advantages=torch.randn(ROWS, COMPLETION, generator=gen),
        returns=torch.randn(ROWS, COMPLETION, generator=gen),
    )


def forward_backward(model: ActorCritic, exp: Experience) -> None:
    """The PPO micro-batch losses (as ``PPOTrainer._micro_losses``) and their backward."""
    logprobs, _, values = model(exp, 1.0)
    pg, _ = ca.policy_loss(logprobs, exp.old_logprobs, exp.advantages, exp.mask)
    vf, _ = ca.value_loss(values, exp.values, exp.returns, exp.mask)
    (ca.aggregate(pg, exp.mask) + ca.aggregate(vf, exp.mask)).backward()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpointing", choices=["on", "off"])
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, exp = build(args.layers), experience()
    if args.checkpointing == "on":
        model.gradient_checkpointing_enable()
    before, started = status_mib("VmRSS"), time.perf_counter()
    forward_backward(model, exp)
    seconds = time.perf_counter() - started
    peak = status_mib("VmHWM")
    grads = sum(p.grad is not None for p in model.parameters())
    print(
        json.dumps(
            {
                "checkpointing": args.checkpointing,
                "layers": args.layers,
                "rss_before_mib": round(before, 1),
                "peak_rss_mib": round(peak, 1),
                "added_mib": round(peak - before, 1),
                "params_with_grad": grads,
                "forward_backward_s": round(seconds, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
