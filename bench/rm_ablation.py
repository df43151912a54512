"""UFRM ablation on real preference data: BT vs BT+IRL vs BT+IRL+CL, several seeds.

    python bench/rm_ablation.py --backbone TINY_WORLD/reward --out /tmp/abl [--seeds 0 1 2] \
        [--stage2-seeds 0 1 2] [--dev]

Data (../shared/data): the HH-RLHF harmless sample (first ``--hh-train`` pairs train, the next
``--hh-eval`` evaluate) and FinanceIQ test-sample pairs (split by question: 70% / 30%, so a
question's pairs stay on one side). Prints one JSON line per run and a summary line per cell.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
import zlib
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from align.core.data import load_records, messages_of, write_jsonl
from align.core.pref_data import financeiq_prefs, load_hh_rlhf
from rm.evaluate import evaluate_reward_model
from rm.ufrm import UFRMConfig, run_ufrm

VARIANTS = {"bt": (0.0, 0.0), "bt+irl": (0.5, 0.0), "bt+irl+cl": (0.5, 0.1)}
DATA = Path(
    os.environ.get("ALIGN_SHARED_DATA", Path(__file__).resolve().parents[1] / "../shared/data")
)


def load_splits(hh_train: int, hh_eval: int, dev: bool = False) -> dict[str, list[dict]]:
    """Train / held-out record lists. HH: the first ``hh_train`` pairs train, the next
    ``hh_eval`` are held out. FinanceIQ: split by question (crc32 of its id mod 10: buckets
    0-6 train, 7-9 held out), so a question's three pairs stay on one side. ``dev``: the
    held-out parts are not read; the last 150 HH training pairs and FinanceIQ bucket 6 serve
    as the evaluation set instead (for choosing a set-up without touching held-out data)."""
    hh = load_hh_rlhf(DATA / "hh-rlhf/harmless-base-sample.jsonl").records
    fiq = financeiq_prefs(DATA / "financeiq/test-sample").records
    bucket = {r["id"]: zlib.crc32(r["id"].encode()) % 10 for r in fiq}
    if dev:
        return {
            "hh_train": hh[: hh_train - 150],
            "hh_eval": hh[hh_train - 150 : hh_train],
            "fiq_train": [r for r in fiq if bucket[r["id"]] < 6],
            "fiq_eval": [r for r in fiq if bucket[r["id"]] == 6],
        }
    return {
        "hh_train": hh[:hh_train],
        "hh_eval": hh[hh_train : hh_train + hh_eval],
        "fiq_train": [r for r in fiq if bucket[r["id"]] < 7],
        "fiq_eval": [r for r in fiq if bucket[r["id"]] >= 7],
    }


def _splits(out: Path, hh_train: int, hh_eval: int, dev: bool = False) -> dict:
    paths = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in load_splits(hh_train, hh_eval, dev).items():
        paths[name] = out / f"{name}.jsonl"
        write_jsonl(rows, paths[name])
    return paths


def bpe_tokenizer(texts: list[str], out: Path, template_from: str, vocab_size: int = 8192):
    """A byte-level BPE trained on ``texts`` (the training split only), with the chat template
    and special tokens of ``template_from``: better coverage of the real text than the tiny
    world's tokenizer, which was trained on synthetic Chinese financial text."""
    ref = AutoTokenizer.from_pretrained(template_from)
    special = {"pad_token": ref.pad_token, "bos_token": ref.bos_token, "eos_token": ref.eos_token}
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, model_max_length=4096, **special)
    tok.chat_template = ref.chat_template
    tok.save_pretrained(out)
    return str(out)


def _split_texts(paths: dict) -> list[str]:
    texts = []
    for name in ("hh_train", "fiq_train"):
        for r in load_records(paths[name], "prefs"):
            texts += [m["content"] for m in messages_of(r)] + [r["chosen"], r["rejected"]]
    return texts


def fresh_backbone(
    tokenizer_dir: str, out: Path, seed: int = 0, width: int = 64, layers: int = 2
) -> str:
    """A fresh tiny Llama reward backbone (``width`` hidden, ``layers`` layers, head_dim 32)."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=width,
        intermediate_size=round(width * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=width // 32,
        num_key_value_heads=max(1, width // 64),
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config.num_labels = 1
    torch.manual_seed(seed)
    LlamaForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def resolve_backbone(spec: str, a, paths: dict) -> str:
    """``DIR`` (used as is), ``fresh:TOKENIZER_DIR`` or ``fresh-bpe:TEMPLATE_TOKENIZER_DIR``
    (a BPE trained on the training splits) → a backbone directory under ``a.out``."""
    if spec.startswith("fresh:"):
        tok = spec.removeprefix("fresh:")
    elif spec.startswith("fresh-bpe:"):
        tok = bpe_tokenizer(
            _split_texts(paths), a.out / "bpe", spec.removeprefix("fresh-bpe:"), a.bpe_vocab
        )
    else:
        return spec
    return fresh_backbone(tok, a.out / "backbone", width=a.width, layers=a.layers)


def _config(a, run_dir: Path, model: str, train: Path, variant: str, seed: int, lr: float):
    irl, cl = VARIANTS[variant]
    return UFRMConfig(
        output_dir=str(run_dir),
        model=model,
        train_data=str(train),
        irl_weight=irl,
        cl_weight=cl,
        seed=seed,
        num_train_epochs=a.epochs,
        learning_rate=lr,
        per_device_train_batch_size=8,
        max_length=a.max_length,
        logging_steps=10,
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
    )


def _evaluate(a, model_dir, path) -> dict:
    ev = evaluate_reward_model(model_dir, path, max_length=a.max_length)
    keys = ("accuracy", "margin", "chosen_mean", "rejected_mean", "n")
    return {**{k: ev[k] for k in keys}, "truncated": ev["encoding"]["truncated"]}


def run_cell(a, paths: dict, data: str, variant: str, seed: int) -> dict:
    """Train one (data set, loss, seed) run from the backbone and evaluate it held out."""
    run_dir = a.out / f"{data}-{variant}-{seed}"
    start = time.perf_counter()
    cfg = _config(a, run_dir, a.backbone, paths[f"{data}_train"], variant, seed, a.lr)
    summary = run_ufrm(cfg)
    ev = _evaluate(a, summary["final"], paths[f"{data}_eval"])
    return {
        "data": data,
        "variant": variant,
        "seed": seed,
        **ev,
        "n_train": summary["stages"][0]["data"]["kept"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def _replay_file(a, paths: dict, seed: int) -> Path:
    """FinanceIQ training pairs plus ``a.replay_share`` of the final set drawn from HH training
    pairs (the sizing of ``rm.ufrm._mix_replay``), written once per seed."""
    fin = list(load_records(paths["fiq_train"], "prefs"))
    general = list(load_records(paths["hh_train"], "prefs"))
    n = min(len(general), round(a.replay_share * len(fin) / (1 - a.replay_share)))
    out = a.out / f"fiq_train_replay{a.replay_share:g}_{seed}.jsonl"
    write_jsonl(
        [
            {k: v for k, v in r.items() if v is not None}
            for r in fin + random.Random(seed).sample(general, n)
        ],
        out,
    )
    return out


def run_stage2(a, paths: dict, seed: int) -> dict:
    """Stage 2 on FinanceIQ (plus ``--replay-share`` HH pairs) from the HH BT+IRL+CL model of
    ``seed`` (stage 1; trained here if the ablation did not), at half the learning rate [P];
    both held-out sets before and after."""
    stage1 = a.out / f"hh-bt+irl+cl-{seed}" / "stage1"
    if not (stage1 / "score_stats.json").is_file():
        run_cell(a, paths, "hh", "bt+irl+cl", seed)
    before = {name: _evaluate(a, stage1, paths[name]) for name in ("hh_eval", "fiq_eval")}
    train = _replay_file(a, paths, seed) if a.replay_share else paths["fiq_train"]
    run_dir = a.out / f"stage2-replay{a.replay_share:g}-{seed}"
    cfg = _config(a, run_dir, str(stage1), train, "bt+irl+cl", seed, a.lr / 2)
    final = run_ufrm(cfg)["final"]
    after = {name: _evaluate(a, final, paths[name]) for name in ("hh_eval", "fiq_eval")}
    return {
        "stage2_seed": seed,
        "replay_share": a.replay_share,
        "after_stage1": before,
        "after_stage2": after,
    }


def _summary(cell: str, rows: list[dict]) -> dict:
    accs = [r["accuracy"] for r in rows]
    return {
        "summary": cell,
        "seeds": len(rows),
        "acc_mean": statistics.mean(accs),
        "acc_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "acc_per_seed": accs,
        "chosen_mean": statistics.mean(r["chosen_mean"] for r in rows),
        "rejected_mean": statistics.mean(r["rejected_mean"] for r in rows),
    }


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--backbone",
        required=True,
        help="RM directory, 'fresh:TOKENIZER_DIR' or 'fresh-bpe:TEMPLATE_TOKENIZER_DIR'",
    )
    ap.add_argument("--width", type=int, default=64, help="Hidden size of a fresh backbone.")
    ap.add_argument("--layers", type=int, default=2, help="Layers of a fresh backbone.")
    ap.add_argument("--bpe-vocab", type=int, default=8192)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--dev", action="store_true", help="Validation slices, not held-out data.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="*", default=["fiq", "hh"])
    ap.add_argument("--hh-train", type=int, default=895)
    ap.add_argument("--hh-eval", type=int, default=300)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument(
        "--stage2-seeds",
        type=int,
        nargs="*",
        default=[],
        help="After the ablation: stage 2 on FinanceIQ from the HH BT+IRL+CL model of each seed.",
    )
    ap.add_argument(
        "--replay-share", type=float, default=0.0, help="Share of HH pairs in the stage-2 set."
    )
    return ap.parse_args()


def main() -> None:
    a = _args()
    paths = _splits(a.out, a.hh_train, a.hh_eval, a.dev)
    a.backbone = resolve_backbone(a.backbone, a, paths)
    print(json.dumps({"setup": {k: str(v) for k, v in vars(a).items()}}), flush=True)
    cells: dict[str, list[dict]] = {}
    for data in a.datasets:
        for variant in a.variants:
            for seed in a.seeds:
                row = run_cell(a, paths, data, variant, seed)
                print(json.dumps(row), flush=True)
                cells.setdefault(f"{data}/{variant}", []).append(row)
    for cell, rows in cells.items():
        print(json.dumps(_summary(cell, rows)), flush=True)
    for seed in a.stage2_seeds:
        print(json.dumps(run_stage2(a, paths, seed)), flush=True)


if __name__ == "__main__":
    main()
