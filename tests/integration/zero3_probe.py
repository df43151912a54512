"""Measured loads for test_sharded_loading.py (not a test module itself).

``python zero3_probe.py unsharded OUT MODEL_DIR``: one process, no DeepSpeed; writes
``OUT/unsharded.json`` with the resident memory a plain ``from_pretrained`` of the causal LM
adds, its weights read once so they are in memory.

``accelerate launch --config_file ZERO3 --num_processes 2 zero3_probe.py zero3 OUT CHECKS.json
PPO_ARGS...``: in each process, first loads every model named in CHECKS (partitioned) and, on
rank 0, writes each one gathered to ``OUT/gathered-NAME.safetensors``; then runs ``align ppo`` with
PPO_ARGS, measuring each model load of the run; writes ``OUT/rank-R.json``.
"""

from __future__ import annotations

import gc
import json
import os
import re
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

CLASSES = {"causal": AutoModelForCausalLM, "seqcls": AutoModelForSequenceClassification}


def _status_mb(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024


def _touch(model: torch.nn.Module) -> None:
    """Read every weight this process holds (its partitions under ZeRO-3), so memory-mapped
    weights are in memory as they are once a forward pass has run."""
    with torch.no_grad():
        for p in model.parameters():
            getattr(p, "ds_tensor", p).float().sum()


def measured(load):
    """``(model, MB)``: what ``load()`` plus one read of the weights adds to the peak resident
    memory (the peak is reset first, /proc/self/clear_refs)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mb("VmRSS")
    model = load()
    _touch(model)
    return model, _status_mb("VmHWM") - before


def unsharded(out: Path, model_dir: str) -> None:
    model, added = measured(lambda: AutoModelForCausalLM.from_pretrained(model_dir))
    (out / "unsharded.json").write_text(json.dumps({"causal": added}))


def _gathered_checks(out: Path, checks: dict) -> None:
    """Each ``{name: [kind, dir, seed]}`` loaded partitioned (the head seeded as the PPO critic's
    is), gathered, written by rank 0."""
    import deepspeed
    from safetensors.torch import save_file

    from align.core.models import load_pretrained

    for name, (kind, directory, seed) in checks.items():
        extra = {"num_labels": 1} if kind == "seqcls" else {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = load_pretrained(CLASSES[kind], directory, name, **extra)
        state = {}
        for key, p in model.named_parameters():
            with deepspeed.zero.GatheredParameters([p]):
                state[key] = p.data.detach().clone()
        if int(os.environ["RANK"]) == 0:
            save_file(state, str(out / f"gathered-{name}.safetensors"))
        del model


def zero3(out: Path, checks_file: str, ppo_args: list[str]) -> None:
    import align.ppo.run as ppo_run
    from align.ppo.config import PPOConfig
    from align.ppo.trainer import make_accelerator

    cfg = PPOConfig.from_sources(None, ppo_args)
    make_accelerator(cfg)  # the run's (shared) accelerator state: ZeRO-3 from here on
    _gathered_checks(out, json.loads(Path(checks_file).read_text()))
    loads = []
    plain = ppo_run.load_pretrained  # align.core.models.load_pretrained

    def load_pretrained(auto_class, path, field, **kwargs):
        model, added = measured(lambda: plain(auto_class, path, field, **kwargs))
        partitioned = all(hasattr(p, "ds_tensor") for p in model.parameters())
        loads.append({"field": field, "class": auto_class.__name__, "added_mb": added,
                      "partitioned": partitioned})  # fmt: skip
        return model

    import rm.functions

    # measures each load of the run (actor, reference, critic; reward models), changes none
    ppo_run.load_pretrained = rm.functions.load_pretrained = load_pretrained
    ppo_run.run_ppo(cfg)
    (out / f"rank-{os.environ['RANK']}.json").write_text(json.dumps(loads))


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "unsharded":
        unsharded(out, sys.argv[3])
    else:
        zero3(out, sys.argv[3], sys.argv[4:])
