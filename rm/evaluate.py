"""Reward-model evaluation: alignment rate per category, margin, reward scale, accuracy by bin.

Alignment rate [S] = share of labelled pairs with ``r_c > r_r`` (a tie counts as wrong). The
score bins split pairs by their mean score ``(r_c + r_r)/2`` into equal-count quantile bins, for
the confidence-interval filter (docs/methods.md §3: keep bins at least as accurate as the whole).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from align.core.data import load_records
from rm.ufrm import encode_pairs, load_reward_model, score_encoded


def _accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    return (chosen > rejected).double().mean().item()


def score_bins(chosen: torch.Tensor, rejected: torch.Tensor, n_bins: int) -> list[dict]:
    """Accuracy per equal-count bin of the pair mean score, lowest scores first."""
    mean = (chosen + rejected) / 2
    order = torch.argsort(mean)
    bins = []
    for part in torch.tensor_split(order, min(n_bins, len(order))):
        bins.append(
            {
                "low": mean[part].min().item(),
                "high": mean[part].max().item(),
                "n": len(part),
                "accuracy": _accuracy(chosen[part], rejected[part]),
            }
        )
    return bins


def summarize(chosen, rejected, categories: list[str], n_bins: int = 5) -> dict:
    """The evaluation dict from per-pair scores."""
    c = torch.tensor(chosen, dtype=torch.float64)
    r = torch.tensor(rejected, dtype=torch.float64)
    both = torch.cat([c, r])
    per_category = {}
    for name in sorted(set(categories)):
        idx = torch.tensor([i for i, x in enumerate(categories) if x == name])
        per_category[name] = {
            "n": len(idx),
            "accuracy": _accuracy(c[idx], r[idx]),
            "margin": (c[idx] - r[idx]).mean().item(),
        }
    return {
        "n": len(c),
        "accuracy": _accuracy(c, r),
        "category_mean_accuracy": sum(v["accuracy"] for v in per_category.values())
        / len(per_category),
        "ties": int((c == r).sum()),
        "margin": (c - r).mean().item(),
        "chosen_mean": c.mean().item(),
        "rejected_mean": r.mean().item(),
        "reward_mean": both.mean().item(),
        "reward_std": both.std(unbiased=False).item(),
        "reward_min": both.min().item(),
        "reward_max": both.max().item(),
        "per_category": per_category,
        "score_bins": score_bins(c, r, n_bins),
    }


def evaluate_reward_model(
    model_dir: str | Path,
    data: str | Path,
    chat_format: str = "hf",
    max_length: int = 1024,
    batch_size: int = 16,
    n_bins: int = 5,
    model=None,
    tokenizer=None,
    default_category: str | None = None,
) -> dict:
    """Score every pair of ``data`` (``prefs`` records) with the reward model in ``model_dir``;
    ``default_category`` fills ``category`` where a record has none."""
    if model is None:
        model, tokenizer = load_reward_model(model_dir)
    records = list(load_records(data, "prefs", default_category))
    encoded, stats = encode_pairs(records, tokenizer, chat_format, max_length, use_margin=False)
    chosen, rejected = score_encoded(model, encoded, tokenizer.pad_token_id, batch_size)
    out = summarize(chosen, rejected, encoded["category"], n_bins)
    out.update({"model": str(model_dir), "data": str(data), "encoding": stats.as_dict()})
    return out


def to_markdown(result: dict) -> str:
    """A markdown table: one row per category, then the overall row, then the score bins."""
    lines = [
        f"RM evaluation of `{result.get('model', '')}` on `{result.get('data', '')}`",
        "",
        "| category | pairs | alignment rate | mean margin |",
        "|---|---|---|---|",
    ]
    for name, v in result["per_category"].items():
        lines.append(f"| {name} | {v['n']} | {100 * v['accuracy']:.1f}% | {v['margin']:+.3f} |")
    lines.append(
        f"| **overall** | {result['n']} | **{100 * result['accuracy']:.1f}%** "
        f"| {result['margin']:+.3f} |"
    )
    lines += [
        "",
        f"Reward scale: mean {result['reward_mean']:+.3f}, std {result['reward_std']:.3f}, "
        f"range [{result['reward_min']:+.3f}, {result['reward_max']:+.3f}]; chosen mean "
        f"{result['chosen_mean']:+.3f}, rejected mean {result['rejected_mean']:+.3f}.",
        "",
        "| score bin (pair mean) | pairs | accuracy |",
        "|---|---|---|",
    ]
    for b in result["score_bins"]:
        lines.append(
            f"| [{b['low']:+.3f}, {b['high']:+.3f}] | {b['n']} | {100 * b['accuracy']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def write_report(result: dict, out_json: Path | None = None, out_md: Path | None = None) -> None:
    if out_json is not None:
        Path(out_json).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if out_md is not None:
        Path(out_md).write_text(to_markdown(result), encoding="utf-8")
