"""One reward-model training step: UFRM (BT + IRL + SimCSE) vs BT-only vs TRL ``RewardTrainer``.

    .venv/bin/python bench/rm_step.py [--model DIR] [--pairs 8] [--steps 10] [--max-length 192]

All three sides train copies of the same sequence-classification backbone (default: the tiny
world's reward model, built on first use) on the same batches of tiny-world preference pairs
(``--pairs`` pairs per step, rendered and tokenized once), in one process. A step is
``trainer.training_step`` (forward, loss, backward) + ``optimizer.step`` + ``zero_grad``. After
one warm-up step per side the sides take turns step by step, so other work on the machine slows
all alike. Prints one JSON line per side (median and mean s/step, pairs/s) and a summary line
with ``ufrm_over_bt`` and ``bt_over_trl`` (ratios of the medians).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from trl import RewardConfig, RewardTrainer

from align.core.data import load_records
from align.tiny.build import build_tiny_world
from rm.ufrm import UFRMConfig, UFRMTrainer, encode_pairs, load_reward_model


def _trainers(model, tok, data, out: Path, pairs: int):
    common = dict(
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=pairs,
    )
    sides = {
        "ufrm": UFRMTrainer(
            model=copy.deepcopy(model),
            processing_class=tok,
            train_dataset=data,
            args=UFRMConfig(output_dir=str(out / "u"), **common),
        ),
        "bt_only": UFRMTrainer(
            model=copy.deepcopy(model),
            processing_class=tok,
            train_dataset=data,
            args=UFRMConfig(output_dir=str(out / "b"), irl_weight=0.0, cl_weight=0.0, **common),
        ),
        "trl": RewardTrainer(
            model=copy.deepcopy(model),
            processing_class=tok,
            train_dataset=data,
            args=RewardConfig(output_dir=str(out / "t"), **common),
        ),
    }
    for t in sides.values():
        t.create_optimizer_and_scheduler(num_training_steps=1000)
        t.current_gradient_accumulation_steps = 1  # set by Trainer.train(); we drive steps
    return sides


def _step(trainer, batch) -> float:
    start = time.perf_counter()
    trainer.model.train()
    trainer.training_step(trainer.model, dict(batch))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=192)
    a = ap.parse_args()
    world, _ = build_tiny_world()
    model, tok = load_reward_model(a.model or world.reward)
    records = list(load_records(world.data("prefs"), "prefs"))[::7][: a.pairs * (a.steps + 1)]
    data, _ = encode_pairs(records, tok, "hf", a.max_length)
    data = Dataset.from_list(data.remove_columns("category").to_list())
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        sides = _trainers(model, tok, data, Path(tmp), a.pairs)
        collate = next(iter(sides.values())).data_collator
        batches = [
            collate([data[i] for i in range(s * a.pairs, (s + 1) * a.pairs)])
            for s in range(a.steps + 1)
        ]
        times = {name: [] for name in sides}
        for s, batch in enumerate(batches):
            for name, trainer in sides.items():
                t = _step(trainer, batch)
                if s:
                    times[name].append(t)
    medians = {}
    for name, ts in times.items():
        medians[name] = statistics.median(ts)
        print(
            json.dumps(
                {
                    "side": name,
                    "steps": len(ts),
                    "pairs_per_step": a.pairs,
                    "median_s_per_step": round(medians[name], 4),
                    "mean_s_per_step": round(statistics.mean(ts), 4),
                    "pairs_per_s": round(a.pairs / medians[name], 2),
                    "threads": torch.get_num_threads(),
                }
            )
        )
    print(
        json.dumps(
            {
                "summary": "rm_step",
                "ufrm_over_bt": round(medians["ufrm"] / medians["bt_only"], 3),
                "bt_over_trl": round(medians["bt_only"] / medians["trl"], 3),
                "ufrm_over_trl": round(medians["ufrm"] / medians["trl"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
