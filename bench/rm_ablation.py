"""UFRM ablation on real preference data: BT vs BT+IRL vs BT+IRL+CL, several seeds.

    python bench/rm_ablation.py --backbone /tmp/tw3/reward --out /tmp/abl [--seeds 0 1 2]

Data (../shared/data): the HH-RLHF harmless sample (first ``--hh-train`` pairs train, the next
``--hh-eval`` evaluate) and FinanceIQ test-sample pairs (split by question: 70% / 30%, so a
question's pairs stay on one side). Prints one JSON line per run and a summary line per cell.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import zlib
from pathlib import Path

VARIANTS = {"bt": (0.0, 0.0), "bt+irl": (0.5, 0.0), "bt+irl+cl": (0.5, 0.1)}
DATA = Path(
    os.environ.get("ALIGN_SHARED_DATA", Path(__file__).resolve().parents[1] / "../shared/data")
)


def _splits(out: Path, hh_train: int, hh_eval: int) -> dict:
    from align.data import write_jsonl
    from align.pref_data import financeiq_prefs, load_hh_rlhf

    hh = load_hh_rlhf(DATA / "hh-rlhf/harmless-base-sample.jsonl").records
    fiq = financeiq_prefs(DATA / "financeiq/test-sample").records
    held = [r for r in fiq if zlib.crc32(r["id"].encode()) % 10 >= 7]
    train = [r for r in fiq if zlib.crc32(r["id"].encode()) % 10 < 7]
    paths = {}
    for name, rows in {
        "hh_train": hh[:hh_train],
        "hh_eval": hh[hh_train : hh_train + hh_eval],
        "fiq_train": train,
        "fiq_eval": held,
    }.items():
        paths[name] = out / f"{name}.jsonl"
        write_jsonl(rows, paths[name])
    return paths


def fresh_backbone(tokenizer_dir: str, out: Path, seed: int = 0) -> str:
    """A fresh tiny Llama reward backbone (hidden 64, 2 layers) with the given tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config.num_labels = 1
    torch.manual_seed(seed)
    LlamaForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _two_stage(a, paths: dict, seed: int) -> None:
    from rm.evaluate import evaluate_reward_model
    from rm.ufrm import UFRMConfig, run_ufrm

    def evaluate(model_dir):
        return {
            name: evaluate_reward_model(model_dir, paths[name], max_length=a.max_length)["accuracy"]
            for name in ("hh_eval", "fiq_eval")
        }

    cfg = UFRMConfig(
        output_dir=str(a.out / f"two-stage-{seed}"),
        model=a.backbone,
        train_data=str(paths["hh_train"]),
        stage2_data=str(paths["fiq_train"]),
        seed=seed,
        num_train_epochs=a.epochs,
        learning_rate=a.lr,
        per_device_train_batch_size=8,
        max_length=a.max_length,
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
    )
    summary = run_ufrm(cfg, evaluate_fn=evaluate)
    print(
        json.dumps(
            {
                "two_stage_seed": seed,
                "after_stage1": summary["stages"][0]["eval"],
                "after_stage2": summary["stages"][1]["eval"],
            }
        ),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", required=True, help="RM directory, or 'fresh:TOKENIZER_DIR'")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=["fiq", "hh"])
    ap.add_argument("--hh-train", type=int, default=600)
    ap.add_argument("--hh-eval", type=int, default=300)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument(
        "--two-stage-seeds",
        type=int,
        nargs="*",
        default=[],
        help="Also run stage 1 = HH, stage 2 = FinanceIQ with these seeds.",
    )
    a = ap.parse_args()
    from rm.evaluate import evaluate_reward_model
    from rm.ufrm import UFRMConfig, run_ufrm

    paths = _splits(a.out, a.hh_train, a.hh_eval)
    if a.backbone.startswith("fresh:"):
        a.backbone = fresh_backbone(a.backbone.removeprefix("fresh:"), a.out / "backbone")
    for seed in a.two_stage_seeds:
        _two_stage(a, paths, seed)
    cells = {}
    for data in a.datasets:
        for variant, (irl, cl) in VARIANTS.items():
            for seed in a.seeds:
                run_dir = a.out / f"{data}-{variant}-{seed}"
                cfg = UFRMConfig(
                    output_dir=str(run_dir),
                    model=a.backbone,
                    train_data=str(paths[f"{data}_train"]),
                    irl_weight=irl,
                    cl_weight=cl,
                    seed=seed,
                    num_train_epochs=a.epochs,
                    learning_rate=a.lr,
                    per_device_train_batch_size=8,
                    max_length=a.max_length,
                    logging_steps=10,
                    report_to="none",
                    bf16=False,
                    gradient_checkpointing=False,
                    disable_tqdm=True,
                )
                summary = run_ufrm(cfg)
                ev = evaluate_reward_model(
                    summary["final"], paths[f"{data}_eval"], max_length=a.max_length
                )
                row = {
                    "data": data,
                    "variant": variant,
                    "seed": seed,
                    "accuracy": ev["accuracy"],
                    "margin": ev["margin"],
                    "chosen_mean": ev["chosen_mean"],
                    "rejected_mean": ev["rejected_mean"],
                    "n_eval": ev["n"],
                    "truncated_eval": ev["encoding"]["truncated"],
                    "n_train": summary["stages"][0]["data"]["kept"],
                }
                print(json.dumps(row), flush=True)
                cells.setdefault((data, variant), []).append(row)
    for (data, variant), rows in cells.items():
        accs = [r["accuracy"] for r in rows]
        print(
            json.dumps(
                {
                    "summary": f"{data}/{variant}",
                    "seeds": len(rows),
                    "acc_mean": statistics.mean(accs),
                    "acc_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "chosen_mean": statistics.mean(r["chosen_mean"] for r in rows),
                    "rejected_mean": statistics.mean(r["rejected_mean"] for r in rows),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
