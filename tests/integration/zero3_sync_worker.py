"""One process of the ZeRO-3 layer-by-layer weight-sync check; launched twice on CPU by
``tests/integration/test_zero3_weight_sync.py``::

    MALLOC_MMAP_THRESHOLD_=65536 accelerate launch \\
        --config_file recipes/accelerate_configs/zero3.yaml --num_processes 2 \\
        --mixed_precision no tests/integration/zero3_sync_worker.py START TRAINER OUT

``START``: the model directory the vLLM engine starts from; ``TRAINER``: the weights the trainer
loads (ZeRO-3 partitioned) and then moves by one optimizer step, so the weights to sync exist
nowhere on disk. Each process syncs its own colocated engine, checks it against a full gather
and measures the memory each way of syncing adds (peak RSS during the sync minus RSS before;
``MALLOC_MMAP_THRESHOLD_`` makes freed tensors leave the process, so RSS follows live memory).
Writes ``OUT/rank-R.json``.
"""

from __future__ import annotations

import gc
import json
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

PROMPTS = [[5 + 7 * i + j for j in range(6 + i)] for i in range(4)]


def _status_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1))


@contextmanager
def extra_memory(into: dict, name: str):
    """``into[name]``: bytes by which the peak RSS inside the block exceeds the RSS before it."""
    gc.collect()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from here
    started = time.perf_counter()
    yield
    into[name] = (_status_kib("VmHWM") - before) * 1024
    into[f"{name}_seconds"] = round(time.perf_counter() - started, 3)


def sizes(actor: torch.nn.Module) -> dict:
    """Bytes of the whole model and of its largest decoder layer (full, not partitioned)."""
    from rollouts.weight_sync import _LAYER, weight_units

    def nbytes(unit) -> int:
        return sum(p.ds_numel * p.element_size() for _, p in unit)

    units = weight_units(actor)
    layers = [u for u in units if _LAYER.match(u[0][0])]
    return {
        "model_bytes": sum(nbytes(u) for u in units),
        "layer_bytes": max(nbytes(u) for u in layers),
        "largest_unit_bytes": max(nbytes(u) for u in units),
        "layers": len(layers),
    }


def train_one_step(accelerator, model, optimizer) -> None:
    torch.manual_seed(0)
    batch = torch.randint(3, 1000, (2, 16))
    accelerator.backward(model(input_ids=batch, labels=batch).loss)
    optimizer.step()
    optimizer.zero_grad()


def full_copy(actor: torch.nn.Module, start: Path) -> torch.nn.Module:
    """A plain model holding the fully gathered trainer weights (the reference)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from rollouts.weight_sync import gathered

    with gathered(actor):
        state = {k: v.detach().clone() for k, v in actor.state_dict().items()}
    unset_hf_deepspeed_config()  # a plain model: not built partitioned (zero.Init)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(start))
    model.load_state_dict(state, strict=False)  # a tied LM head is the embedding
    return model.eval()


def greedy(engine) -> tuple[list, list]:
    from rollouts.base import SamplingParams

    batch = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0))
    return batch.completion_ids, batch.logprobs


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.core.distributed import configure_deepspeed, make_accelerator
    from rollouts.hf_generate import GenerateEngine
    from rollouts.vllm_engine import VLLMEngine, VLLMOptions
    from rollouts.weight_sync import exported, weight_chunks

    start, trainer_dir, out = map(Path, sys.argv[1:4])
    accelerator = make_accelerator()
    configure_deepspeed(accelerator, 1)
    model = AutoModelForCausalLM.from_pretrained(trainer_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    train_one_step(accelerator, model, optimizer)
    actor = accelerator.unwrap_model(model)
    tokenizer = AutoTokenizer.from_pretrained(start)
    options = VLLMOptions(dtype="float32", kv_cache_memory_bytes=2**26, max_model_len=256)
    engine = VLLMEngine(start, tokenizer.eos_token_id, options)
    result = {"rank": accelerator.process_index, **sizes(actor)}
    params = list(actor.parameters())  # this process's share of the weights (ZeRO-3: ~1/2)
    result["local_share"] = sum(p.ds_tensor.numel() for p in params) / sum(
        p.ds_numel for p in params
    )

    before_tokens, _ = greedy(engine)
    with extra_memory(result, "sync_layer_by_layer"):
        engine.sync_weights(actor)
    synced_tokens, synced_logprobs = greedy(engine)
    with extra_memory(result, "gather_layer_by_layer"):  # the trainer's side alone
        for chunk in weight_chunks(actor):
            del chunk
    with extra_memory(result, "sync_whole_model"):  # the former way: one gather of everything
        with exported(actor) as weights:
            engine.llm.collective_rpc("align_load_tensors", args=(weights,))
        del weights

    reference = GenerateEngine.from_tokenizer(full_copy(actor, start), tokenizer)
    ref_tokens, ref_logprobs = greedy(reference)
    gaps = [abs(a - b) for x, y in zip(synced_logprobs, ref_logprobs) for a, b in zip(x, y)]
    result.update(
        tokens_equal_before_sync=before_tokens == ref_tokens,
        tokens_equal_after_sync=synced_tokens == ref_tokens,
        logprob_gap_max=max(gaps),
        completions=synced_tokens,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank-{accelerator.process_index}.json").write_text(json.dumps(result))
    engine.close()


if __name__ == "__main__":
    main()
