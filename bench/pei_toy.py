"""PEI vs plain PPO on a controlled toy: a sub-domain with a reliable reward, one with a noisy one.

    .venv/bin/python bench/pei_toy.py [--seeds 0 1] [--pretrain-steps 20] [--round-steps 10]

Two sub-domains of the tiny world, 金融百科 (glossary) and 保险 (insurance). The reward PPO sees is
the tiny world's rule for glossary answers and, for insurance answers, a deterministic
pseudo-random score of the answer text (a hash mapped to the rule's range): an RM that agrees
with the truth on glossary pairs and is a coin flip on insurance pairs. The labelled pairs that
measure RM alignment are built from held-out items: chosen = the item's reference answer,
rejected = the reference answer of another item of the same sub-domain (right shape, wrong
facts). The GSB judge is the rule (the truth).

Both arms get the same PPO budget, ``pretrain + rounds × round`` steps from the same SFT policy:
plain PPO with β = 0.05 and an even mix, PEI with β₀ = 0.1 halving each round and the mix its
controller chooses. Reported per seed: the mixture PEI ended with, and the true (rule) reward of
greedy answers to the held-out prompts of both sub-domains, before and after, for both arms.
Prints one JSON line per seed and a summary line.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from align.core.checkpoints import latest_checkpoint
from align.core.data import load_records, write_jsonl
from align.pei.run import PEIConfig, run_pei
from align.ppo.config import PPOConfig
from align.ppo.run import run_ppo
from align.tiny.build import build_tiny_world
from align.tiny.reward import tiny_world_reward
from eval.generation import generate_answers
from rollouts.base import SamplingParams

RELIABLE, NOISY = "金融百科", "保险"


def toy_reward(prompts, completions, category, reference, **_) -> list[float]:
    """The rule for the reliable sub-domain; a hash of the answer for the noisy one."""
    truth = tiny_world_reward(prompts, completions, category=category, reference=reference)
    out = []
    for text, c, t in zip(completions, category, truth):
        if c == NOISY:
            h = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            t = -0.75 + 1.75 * h
        out.append(t)
    return out


def write_toy_data(world, root: Path) -> dict[str, str]:
    def pick(name: str) -> list[dict]:
        rows = load_records(world.data(name), "prompts").to_list()
        return [r for r in rows if r["category"] in (RELIABLE, NOISY)]

    prompts, held_out = pick("prompts"), pick("eval_prompts")
    pairs = []
    for c in (RELIABLE, NOISY):
        items = [r for r in held_out if r["category"] == c]
        for i, r in enumerate(items):
            other = items[(i + 1) % len(items)]["reference"]
            if other != r["reference"]:
                pairs.append({**r, "chosen": r["reference"], "rejected": other})
    paths = {"prompts": root / "prompts.jsonl", "eval": root / "eval.jsonl"}
    paths["pairs"] = root / "pairs.jsonl"
    write_jsonl(prompts, paths["prompts"])
    write_jsonl(held_out, paths["eval"])
    write_jsonl(pairs, paths["pairs"])
    return {k: str(v) for k, v in paths.items()}


def true_reward(model_dir: Path, eval_path: str) -> dict[str, float]:
    """Mean rule reward of greedy answers to the held-out prompts, per sub-domain and overall."""
    rows = load_records(eval_path, "prompts").to_list()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    answers = generate_answers(
        model, tokenizer, rows, SamplingParams(max_new_tokens=48, temperature=0.0), batch_size=64
    )
    scores = tiny_world_reward(
        None,
        answers,
        category=[r["category"] for r in rows],
        reference=[r["reference"] for r in rows],
    )
    out = {
        c: statistics.fmean(s for s, r in zip(scores, rows) if r["category"] == c)
        for c in (RELIABLE, NOISY)
    }
    out["overall"] = statistics.fmean(scores)
    return out


def ppo_overrides(world, data: dict, seed: int) -> dict:
    return {
        "policy": str(world.policy),
        "critic": str(world.reward),
        "prompts": data["prompts"],
        "eval_prompts": data["eval"],
        "rewards": [{"type": "python", "fn": f"{Path(__file__).resolve()}:toy_reward"}],
        "save_every": 0,
        "seed": seed,
    }


def run_plain(world, data, root: Path, seed: int, steps: int) -> Path:
    values = {**ppo_overrides(world, data, seed), "total_steps": steps, "beta": 0.05}
    cfg = dataclasses.replace(
        PPOConfig.from_sources("tiny"), **values, output_dir=str(root / "plain")
    )
    run_ppo(cfg)
    return latest_checkpoint(cfg.output_dir) / "actor"


def run_pei_arm(world, data, root: Path, seed: int, args) -> tuple[Path, list]:
    cfg = PEIConfig(
        rounds=args.rounds,
        pretrain_steps=args.pretrain_steps,
        round_steps=args.round_steps,
        ppo={"config": "tiny", **ppo_overrides(world, data, seed)},  # the plain arm's base
        rm_pairs=data["pairs"],
        judge=[{"type": "python", "fn": "align.tiny.reward:tiny_world_reward"}],
        eval_prompts=data["eval"],
        controller={"early_stop": False},  # same budget as the plain arm
        output_dir=str(root / "pei"),
        seed=seed,
    )
    decisions = run_pei(cfg)
    last = latest_checkpoint(root / "pei" / f"round-{decisions[-1].round}" / "ppo")
    return last / "actor", decisions


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--pretrain-steps", type=int, default=20)
    parser.add_argument("--round-steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", help="keep the runs under this directory")
    args = parser.parse_args(argv)

    world, _ = build_tiny_world()
    budget = args.pretrain_steps + args.rounds * args.round_steps
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        data = write_toy_data(world, base)
        sft = true_reward(world.policy, data["eval"])
        for seed in args.seeds:
            root = base / f"seed-{seed}"
            plain = true_reward(run_plain(world, data, root, seed, budget), data["eval"])
            actor, decisions = run_pei_arm(world, data, root, seed, args)
            pei = true_reward(actor, data["eval"])
            line = {
                "seed": seed,
                "ppo_steps_per_arm": budget,
                "sft": sft,
                "plain_ppo": plain,
                "pei": pei,
                "gain_plain": plain["overall"] - sft["overall"],
                "gain_pei": pei["overall"] - sft["overall"],
                "pei_weights": decisions[-1].weights,
                "pei_alignment": decisions[0].alignment,
                "pei_steps_by_round": [d.steps for d in decisions],
            }
            results.append(line)
            print(json.dumps(line, ensure_ascii=False), flush=True)
    summary = {
        "summary": True,
        "mean_gain_plain": statistics.fmean(r["gain_plain"] for r in results),
        "mean_gain_pei": statistics.fmean(r["gain_pei"] for r in results),
        "pei_at_least_plain": sum(r["gain_pei"] >= r["gain_plain"] for r in results),
        "seeds": len(results),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
