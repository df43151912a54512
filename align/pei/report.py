"""The PEI report: ``report.md`` with a table per round and four charts (PNG, matplotlib Agg).

- ``gsb_by_round.png`` — good / same / bad shares vs SFT per sub-domain, one panel per round;
- ``reward_hacking.png`` — per sub-domain and round, the share of eval prompts on which the
  reward model prefers the policy's answer while the judge prefers SFT's (and plain PPO's, with a
  baseline);
- ``mixture.png`` — each sub-domain's mixture weight before every round and after the last;
- ``training.png`` — KL and reward score per PPO step across rounds (dashed lines: round starts).

With a baseline (``baseline/result.json``), a section compares PEI's last round with plain PPO.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib import rc_context
from matplotlib.figure import Figure

from align.core.io import METRICS_FILE, atomic_write_text, read_jsonl
from align.pei.controller import ARROWS, Decision
from eval.charts import _font_rc, chart_labels, save_png

COLORS = {"good": "#2e7d32", "same": "#9e9e9e", "bad": "#c62828"}


def write_pei_report(out: Path, decisions: list[Decision]) -> Path:
    """Rewrite ``out/report.md`` and its charts from the rounds decided so far."""
    evaluations = [_evaluation(out / f"round-{d.round}") for d in decisions]
    baseline = _baseline(out)
    gsb = [_gsb_rows(e) for e in evaluations]
    _gsb_chart(gsb, decisions, out / "gsb_by_round.png")
    _hacking_chart(evaluations, decisions, baseline, out / "reward_hacking.png")
    _mixture_chart(decisions, out / "mixture.png")
    _training_chart(out, decisions, out / "training.png")
    markdown = _markdown(decisions, gsb, evaluations, baseline)
    return atomic_write_text(out / "report.md", markdown)


def _evaluation(rdir: Path) -> dict:
    return json.loads((rdir / "evaluation.json").read_text(encoding="utf-8"))


def _baseline(out: Path) -> dict | None:
    """The baseline's result and evaluation, when it finished (``result.json`` is written last)."""
    if not (out / "baseline" / "result.json").is_file():
        return None
    result = json.loads((out / "baseline" / "result.json").read_text(encoding="utf-8"))
    return {**result, "evaluation": _evaluation(out / "baseline")}


def _gsb_rows(evaluation: dict) -> dict[str, dict]:
    return {**evaluation["gsb"]["per_category"], "overall": evaluation["gsb"]["overall"]}


def _markdown(
    decisions: list[Decision],
    gsb: list[dict[str, dict]],
    evaluations: list[dict],
    baseline: dict | None,
) -> str:
    last = decisions[-1]
    lines = [
        "# PEI-RLHF run",
        "",
        f"{len(decisions)} round(s): PPO pre-training (round 0) then improvement rounds. Each "
        "round's policy is compared with the SFT policy on held-out prompts (G = net win rate, "
        "(good − bad)/judged); with the reward model's alignment A it decides the next mixture "
        "(↑ more data, ↓ less) and a smaller KL weight β. A is measured on labelled pairs and "
        "on-policy (on the round's decisive judged pairs: does the reward order the policy's and "
        "SFT's answers as the judge does?); the RM tier uses "
        f"{_SOURCE[last.alignment_source]}. *Hacked* = the share of eval prompts on which the "
        "reward model prefers the policy's answer while the judge prefers SFT's.",
        "",
        f"**Stopped after round {last.round}**: {last.stop_reason}."
        if last.stop
        else f"Running: next round uses β = {last.next_beta:g}.",
        "",
        *(_baseline_section(last, gsb[-1], evaluations[-1], baseline) if baseline else []),
        "![GSB per sub-domain per round](gsb_by_round.png)",
        "![Reward hacking per sub-domain per round](reward_hacking.png)",
        "![Mixture weights](mixture.png)",
        "![KL and reward during PPO](training.png)",
        "",
        *_label_key(list(last.steps)),
    ]
    for d, rows, e in zip(decisions, gsb, evaluations):
        lines += _round_table(d, rows, e.get("reward_hacking", {}))
    return "\n".join(lines) + "\n"


_SOURCE = {
    "labelled": "the labelled one",
    "on_policy": "the on-policy one",
    "min": "the lower of the two",
}


def _baseline_section(
    last: Decision, rows: dict[str, dict], evaluation: dict, baseline: dict
) -> list[str]:
    """PEI's last round vs plain PPO on the same budget, per sub-domain and overall."""
    base_eval = baseline["evaluation"]
    base_rows = _gsb_rows(base_eval)
    hacked, base_hacked = evaluation["reward_hacking"], base_eval["reward_hacking"]
    overall_hacked = evaluation["reward_hacking_overall"]["rate"]
    base_overall_hacked = base_eval["reward_hacking_overall"]["rate"]
    lines = [
        f"## PEI vs plain PPO ({baseline['steps']} PPO steps each)",
        "",
        f"Plain PPO: from SFT, β = {baseline['beta']:g}, the initial mixture, one run of "
        f"{baseline['steps']} steps. PEI: its rounds 0–{last.round}. Net win vs SFT:",
        "",
        "| sub-domain | PEI G | plain PPO G | PEI − plain | PEI hacked | plain hacked |",
        "|---|---|---|---|---|---|",
    ]
    for c in last.steps:
        g, b = rows[c]["rates"]["net_win"], base_rows[c]["rates"]["net_win"]
        lines.append(
            f"| {c} | {g:+.1%} | {b:+.1%} | {g - b:+.1%} | {hacked[c]['rate']:.1%} "
            f"| {base_hacked[c]['rate']:.1%} |"
        )
    g, b = last.overall_gain, baseline["overall_gain"]
    lines += [
        f"| **overall** | **{g:+.1%}** | **{b:+.1%}** | **{g - b:+.1%}** "
        f"| {overall_hacked:.1%} | {base_overall_hacked:.1%} |",
        "",
    ]
    return lines


def _label_key(categories: list[str]) -> list[str]:
    _, aliases = chart_labels(categories)
    if not aliases:
        return []
    return ["Chart labels: " + ", ".join(f"{a} = {c}" for a, c in aliases.items()), ""]


def _round_table(d: Decision, rows: dict[str, dict], hacking: dict[str, dict]) -> list[str]:
    overall = rows["overall"]
    lines = [
        f"## Round {d.round} (β = {d.beta_used:g})",
        "",
        f"Overall vs SFT: good {overall['good']} / same {overall['same']} / bad {overall['bad']}, "
        f"net win {d.overall_gain:+.1%}.",
        "",
        "| sub-domain | good/same/bad | G (net win) | PPO tier | A labelled | A on-policy "
        "| RM tier | hacked | step | weight | next weight |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in d.steps:
        r = rows.get(c, {"good": 0, "same": 0, "bad": 0})
        labelled = d.alignment_labelled.get(c, d.alignment[c])
        on_policy = d.alignment_on_policy.get(c)
        hacked = hacking.get(c, {}).get("rate")
        lines.append(
            f"| {c} | {r['good']}/{r['same']}/{r['bad']} | {d.gain[c]:+.1%} | {d.ppo_tiers[c]} "
            f"| {labelled:.1%} | {_percent(on_policy)} | {d.rm_tiers[c]} | {_percent(hacked)} "
            f"| {ARROWS[d.steps[c]]} | {d.weights_before[c]:.3f} | {d.weights[c]:.3f} |"
        )
    stop = f" Stop: {d.stop_reason}." if d.stop else ""
    lines += ["", f"‖Δw‖₁ = {d.weight_change:.4f}; next β = {d.next_beta:g}.{stop}", ""]
    return lines


def _gsb_chart(gsb: list[dict[str, dict]], decisions: list[Decision], path: Path) -> None:
    categories = list(decisions[0].steps)
    labels, _ = chart_labels(categories)
    with rc_context(_font_rc()):
        fig = Figure(figsize=(4.2 * len(gsb), 0.45 * len(categories) + 1.8), dpi=110)
        axes = fig.subplots(1, len(gsb), squeeze=False)[0]
        for ax, rows, d in zip(axes, gsb, decisions):
            left = [0.0] * len(categories)
            for verdict in ("good", "same", "bad"):
                shares = [_share(rows.get(c), verdict) for c in categories]
                ax.barh(labels, shares, left=left, color=COLORS[verdict], label=verdict)
                left = [a + b for a, b in zip(left, shares)]
            ax.set_xlim(0, 1)
            ax.set_title(f"round {d.round}")
            ax.invert_yaxis()
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8)
        fig.suptitle("policy vs SFT: good / same / bad per sub-domain")
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        save_png(fig, path)


def _percent(value: float | None) -> str:
    """``12.5%``, or ``–`` for a value not measured (decisions written before it was)."""
    return "–" if value is None else f"{value:.1%}"


def _hacking_chart(
    evaluations: list[dict], decisions: list[Decision], baseline: dict | None, path: Path
) -> None:
    """Grouped horizontal bars: per sub-domain, the hacked share of every round (and of plain
    PPO, hatched, with a baseline)."""
    categories = list(decisions[0].steps)
    labels, _ = chart_labels(categories)
    series = [(f"round {d.round}", e) for d, e in zip(decisions, evaluations)]
    if baseline:
        series.append((f"plain PPO ({baseline['steps']} steps)", baseline["evaluation"]))
    height = 0.8 / len(series)
    with rc_context(_font_rc()):
        fig = Figure(figsize=(6.4, 0.5 * len(categories) * max(1, len(series) / 2) + 1.6), dpi=110)
        ax = fig.subplots()
        for i, (name, e) in enumerate(series):
            rates = [e.get("reward_hacking", {}).get(c, {}).get("rate", 0.0) for c in categories]
            y = [j + i * height for j in range(len(categories))]
            plain = baseline is not None and i == len(series) - 1
            ax.barh(y, rates, height=height, label=name, hatch="//" if plain else None,
                    color="#616161" if plain else f"C{i}")  # fmt: skip
        ax.set_yticks([j + 0.4 - height / 2 for j in range(len(categories))], labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of eval prompts: RM prefers the policy, judge prefers SFT")
        ax.set_title("reward hacking per sub-domain")
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_png(fig, path)


def _share(row: dict | None, verdict: str) -> float:
    if not row:
        return 0.0
    n = row["good"] + row["same"] + row["bad"]
    return row[verdict] / n if n else 0.0


def _mixture_chart(decisions: list[Decision], path: Path) -> None:
    rounds = [d.round for d in decisions] + [decisions[-1].round + 1]
    categories = list(decisions[0].steps)
    labels, _ = chart_labels(categories)
    with rc_context(_font_rc()):
        fig = Figure(figsize=(6, 3.6), dpi=110)
        ax = fig.subplots()
        for c, label in zip(categories, labels):
            ws = [d.weights_before[c] for d in decisions] + [decisions[-1].weights[c]]
            ax.plot(rounds, ws, marker="o", label=label)
        ax.set_xlabel("round (last point: the mixture chosen for the next round)")
        ax.set_ylabel("mixture weight")
        ax.set_xticks(rounds)
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_png(fig, path)


def _training_chart(out: Path, decisions: list[Decision], path: Path) -> None:
    fig = Figure(figsize=(9, 3.4), dpi=110)
    kl_ax, score_ax = fig.subplots(1, 2)
    offset = 0
    for d in decisions:
        steps, kl, score = _curves(out / f"round-{d.round}" / "ppo" / METRICS_FILE)
        x = [offset + s for s in steps]
        kl_ax.plot(x, kl, color="C0")
        score_ax.plot(x, score, color="C1")
        for ax in (kl_ax, score_ax):
            ax.axvline(offset, color="grey", linestyle="--", linewidth=0.8)
        offset += max(steps, default=0)
    kl_ax.set(title="KL(policy ‖ reference) per sample", xlabel="PPO step (all rounds)")
    score_ax.set(title="reward score", xlabel="PPO step (all rounds)")
    fig.tight_layout()
    save_png(fig, path)


def _curves(metrics: Path) -> tuple[list[int], list[float], list[float]]:
    steps, kl, score = [], [], []
    for m in read_jsonl(metrics):  # none yet: no curve
        if "objective/kl" in m:
            steps.append(m["step"])
            kl.append(m["objective/kl"])
            score.append(m["objective/scores"])
    return steps, kl, score
