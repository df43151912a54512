"""PEI vs plain PPO on the shipped tiny PEI config (`make demo`'s run), over seeds.

    .venv/bin/python bench/pei_demo.py [--seeds 0 1 2] [--root DIR] [-- --rounds 2 ...]

Each seed runs ``align pei --config tiny --baseline true --seed S`` in ``<root>/seed-S`` (the
reward model is trained per seed; a rerun resumes whatever finished): the PEI loop, then plain PPO
from SFT on the same number of PPO steps with the PPO config's β and the initial mixture. Both
final policies are judged against SFT by the tiny world's rule on the same held-out prompts.
Prints one JSON line per seed (net win vs SFT, overall and per sub-domain, for both arms; the
reward-hacking share; PEI's final mixture) and a Markdown summary: mean ± sd over seeds, and on
how many seeds PEI beat plain PPO by at least 10 points of net win.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from align.pei.controller import ALIGNMENT_SOURCES, ControllerConfig, RoundMeasurements, decide
from align.pei.run import PEIConfig, completed_decisions, run_pei

WIN_MARGIN = 0.10  # the bar: PEI ahead of plain PPO by 10 points of net win


def run_seed(root: Path, seed: int, overrides: list[str]) -> dict:
    """Run (or resume) one seed; returns its numbers from the run directory."""
    out = root / f"seed-{seed}"
    args = ["--seed", str(seed), "--output_dir", str(out), "--baseline", "true", *overrides]
    start = time.perf_counter()
    run_pei(PEIConfig.from_sources("tiny", args))
    return {"seed": seed, "seconds": round(time.perf_counter() - start), **read_run(out)}


def read_run(out: Path) -> dict:
    """Final net win vs SFT and reward hacking of PEI (its last round) and of plain PPO."""
    last = completed_decisions(out)[-1]
    pei = json.loads((out / f"round-{last.round}" / "evaluation.json").read_text())
    plain = json.loads((out / "baseline" / "evaluation.json").read_text())
    steps = json.loads((out / "baseline" / "result.json").read_text())["steps"]
    return {
        "rounds": last.round,
        "stop": last.stop_reason,
        "steps": steps,
        "pei": _arm(pei),
        "plain": _arm(plain),
        "final_mix": {c: round(w, 3) for c, w in last.weights_before.items()},
        "round0_steps": replay_round_zero(out, last.weights_before),
    }


def replay_round_zero(out: Path, categories: dict) -> dict[str, dict[str, int]]:
    """The steps the controller takes after round 0 under each ``rm_alignment`` (the run used
    one; the others are replayed from its ``evaluation.json``)."""
    e = json.loads((out / "round-0" / "evaluation.json").read_text())
    gsb, on_policy = e["gsb"]["per_category"], e["rm_alignment_on_policy"]
    measured = RoundMeasurements(
        gain={c: row["rates"]["net_win"] for c, row in gsb.items()},
        gain_counts={c: row["n"] for c, row in gsb.items()},
        alignment={c: v["accuracy"] for c, v in e["rm_alignment"].items()},
        alignment_counts={c: v["n"] for c, v in e["rm_alignment"].items()},
        overall_gain=e["gsb"]["overall"]["rates"]["net_win"],
        on_policy_alignment={c: v["accuracy"] for c, v in on_policy.items()},
        on_policy_counts={c: v["n"] for c, v in on_policy.items()},
    )
    even = {c: 1 / len(categories) for c in categories}
    steps = {}
    for mode in ALIGNMENT_SOURCES:
        cfg = ControllerConfig(rm_alignment=mode)
        steps[mode] = decide(0, measured, even, even, 0.1, None, 2, cfg).steps
    return steps


def _arm(evaluation: dict) -> dict:
    gsb = evaluation["gsb"]
    gain = {c: row["rates"]["net_win"] for c, row in gsb["per_category"].items()}
    return {
        "overall": gsb["overall"]["rates"]["net_win"],
        "per_category": gain,
        "hacked": evaluation["reward_hacking_overall"]["rate"],
    }


def summary(results: list[dict]) -> str:
    """Markdown: per sub-domain and overall, mean ± sd of both arms and of their difference."""
    categories = list(results[0]["pei"]["per_category"])
    lines = [
        "| sub-domain | PEI | plain PPO | PEI − plain |",
        "|---|---|---|---|",
    ]
    for c in [*categories, "overall"]:
        pei = [_gain(r["pei"], c) for r in results]
        plain = [_gain(r["plain"], c) for r in results]
        diff = [a - b for a, b in zip(pei, plain)]
        name = f"**{c}**" if c == "overall" else c
        lines.append(f"| {name} | {_ms(pei)} | {_ms(plain)} | {_ms(diff)} |")
    hacked = [r["pei"]["hacked"] for r in results], [r["plain"]["hacked"] for r in results]
    lines.append(
        f"| reward hacked (% of prompts) | {_ms(hacked[0], '')} | {_ms(hacked[1], '')} | |"
    )
    wins = sum(r["pei"]["overall"] - r["plain"]["overall"] >= WIN_MARGIN for r in results)
    margin = f"{WIN_MARGIN * 100:.0f} points"
    lines += ["", f"PEI ahead by ≥ {margin} on {wins} of {len(results)} seeds."]
    return "\n".join(lines)


def _gain(arm: dict, category: str) -> float:
    return arm["overall"] if category == "overall" else arm["per_category"][category]


def _ms(values: list[float], sign: str = "+") -> str:
    """``+12.3 ± 4.5`` in points (sample sd; none with one value)."""
    mean = f"{statistics.fmean(values) * 100:{sign}.1f}"
    if len(values) < 2:
        return mean
    return f"{mean} ± {statistics.stdev(values) * 100:.1f}"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/pei-demo-bench", help="run directories go here")
    parser.add_argument("overrides", nargs="*", help="after --: align pei options for every seed")
    args = parser.parse_args(argv)
    root = Path(args.root)
    results = []
    for seed in args.seeds:
        results.append(run_seed(root, seed, args.overrides))
        print(json.dumps(results[-1], ensure_ascii=False), flush=True)
    print(summary(results))


if __name__ == "__main__":
    main(sys.argv[1:])
