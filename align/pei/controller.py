"""The PEI-RLHF controller (docs/methods.md §4): pure decisions between PPO rounds.

From each sub-domain's PPO gain ``G_d`` (net win rate vs SFT) and reward-model alignment ``A_d``:
tiers → the attribution table → a step ``s_d ∈ {+2 … −2}`` → new mixture weights, the next KL
weight β and whether to stop. ``A_d`` is measured two ways (``rm_alignment`` picks the one the
RM tier uses): on labelled pairs, and on-policy — on the round's own judged pairs (policy answer,
SFT answer), where a reward model PPO has learnt to exploit disagrees with the judge
(:mod:`align.pei.alignment`). No I/O, no models: the loop in :mod:`align.pei.run` feeds it
measurements and records what it decides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from align.core.config import check_ranges, help_field

TIERS = ("good", "medium", "bad")

# (PPO tier, RM tier) → step s_d [S: XuanYuan3's attribution table]. Rows are the PPO outcome.
ATTRIBUTION: dict[tuple[str, str], int] = {
    ("good", "good"): 0,
    ("good", "medium"): +1,
    ("good", "bad"): 0,
    ("medium", "good"): +1,
    ("medium", "medium"): 0,
    ("medium", "bad"): -1,
    ("bad", "good"): +2,
    ("bad", "medium"): -1,
    ("bad", "bad"): -2,
}
ARROWS = {2: "↑↑", 1: "↑", 0: "—", -1: "↓", -2: "↓↓"}
ALIGNMENT_SOURCES = ("on_policy", "labelled", "min")


@dataclass(frozen=True)
class ControllerConfig:
    """Every number of the controller; defaults are docs/methods.md §4's."""

    tiering: Literal["thresholds", "tertiles"] = help_field(
        "How sub-domains are tiered: thresholds (below) or tertiles across sub-domains.",
        "thresholds",
    )
    ppo_good: float = help_field(
        "Net win rate G_d at or above this is a good PPO tier.", 0.25, ge=-1, le=1
    )
    ppo_medium: float = help_field(
        "G_d at or above this (below ppo_good) is medium.", 0.05, ge=-1, le=1
    )
    rm_good: float = help_field(
        "RM alignment A_d at or above this is a good RM tier.", 0.70, ge=0, le=1
    )
    rm_medium: float = help_field(
        "A_d at or above this (below rm_good) is medium.", 0.60, ge=0, le=1
    )
    min_samples: int = help_field(
        "Fewer eval prompts (or labelled pairs) in a sub-domain → medium tier.", 30, ge=1
    )
    rm_alignment: Literal["on_policy", "labelled", "min"] = help_field(
        "The A_d the RM tier uses: on_policy (the share of the round's decisive judged pairs, "
        "policy vs SFT answer, that the reward orders as the judge does), labelled (accuracy on "
        "rm_pairs), or min (the lower of the two that rest on enough pairs). Both are logged "
        "every round.",
        "min",
    )
    min_decisive_pairs: int = help_field(
        "Fewer decisive on-policy pairs (verdict good or bad) in a sub-domain → its on-policy "
        "alignment is unknown (medium tier with rm_alignment: on_policy).",
        20,
        ge=1,
    )
    eta: float = help_field("Step size η of w ← w·exp(η·s) [P: ln 1.5].", math.log(1.5), ge=0)
    weight_floor: float = help_field(
        "Lowest weight as a share of the initial weight.", 0.25, gt=0, le=1
    )
    beta_decay: float = help_field("β ← max(beta_min, beta_decay · β) each round.", 0.5, gt=0, le=1)
    beta_min: float = help_field("Lowest β.", 0.01, ge=0)
    stop_delta: float = help_field("‖Δw‖₁ below this means the mixture is unchanged.", 1e-3, ge=0)
    min_gain: float = help_field(
        "Stop when the overall net win improves by less than this over the last round.",
        0.01,
        ge=-1,
        le=1,
    )
    early_stop: bool = help_field("Stop early (false: run every round up to the limit).", True)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.tiering not in ("thresholds", "tertiles"):
            raise ValueError(f"tiering: expected thresholds or tertiles, got {self.tiering!r}")
        if self.rm_alignment not in ALIGNMENT_SOURCES:
            raise ValueError(
                f"rm_alignment: expected one of {', '.join(ALIGNMENT_SOURCES)}, "
                f"got {self.rm_alignment!r}"
            )
        if not self.ppo_medium <= self.ppo_good:
            raise ValueError("ppo_medium: expected <= ppo_good")
        if not self.rm_medium <= self.rm_good:
            raise ValueError("rm_medium: expected <= rm_good")


def tier_by_threshold(value: float, good: float, medium: float) -> str:
    """``good`` at or above ``good``, ``medium`` at or above ``medium``, else ``bad``."""
    return "good" if value >= good else "medium" if value >= medium else "bad"


def tertile_tiers(values: Mapping[str, float]) -> dict[str, str]:
    """Rank sub-domains and split them in thirds: the top third good, the bottom third bad.

    With ``k`` sub-domains, ``round(k/3)`` are good and as many bad (ties keep name order), the rest
    medium; a single sub-domain is medium.
    """
    ranked = sorted(values, key=lambda d: (-values[d], d))
    third = round(len(ranked) / 3)
    tiers = {}
    for i, d in enumerate(ranked):
        tiers[d] = "good" if i < third else "bad" if i >= len(ranked) - third else "medium"
    return tiers


def tiers_for(
    values: Mapping[str, float],
    counts: Mapping[str, int],
    good: float,
    medium: float,
    cfg: ControllerConfig,
    min_count: int | None = None,
) -> dict[str, str]:
    """Tier every sub-domain; those with fewer than ``min_count`` (default ``min_samples``)
    measurements are medium."""
    least = cfg.min_samples if min_count is None else min_count
    enough = {d: v for d, v in values.items() if counts.get(d, 0) >= least}
    if cfg.tiering == "tertiles":
        tiers = tertile_tiers(enough)
    else:
        tiers = {d: tier_by_threshold(v, good, medium) for d, v in enough.items()}
    return {d: tiers.get(d, "medium") for d in values}


def alignment_for_tiers(
    measured: RoundMeasurements, categories: list[str], cfg: ControllerConfig
) -> tuple[dict[str, float], dict[str, bool]]:
    """``A_d`` as ``cfg.rm_alignment`` says, and whether it rests on enough pairs (else the RM
    tier is medium). Labelled needs ``min_samples`` pairs, on-policy ``min_decisive_pairs``
    decisive ones; ``min`` takes the lower of the values that have enough (the lower of both,
    not enough, when neither has)."""
    labelled = {
        d: (measured.alignment.get(d, 0.0), measured.alignment_counts.get(d, 0) >= cfg.min_samples)
        for d in categories
    }
    on_policy = {
        d: (
            measured.on_policy_alignment.get(d, 0.0),
            measured.on_policy_counts.get(d, 0) >= cfg.min_decisive_pairs,
        )
        for d in categories
    }
    if cfg.rm_alignment == "labelled":
        chosen = labelled
    elif cfg.rm_alignment == "on_policy":
        chosen = on_policy
    else:
        chosen = {d: _lower_of(labelled[d], on_policy[d]) for d in categories}
    return {d: v for d, (v, _) in chosen.items()}, {d: ok for d, (_, ok) in chosen.items()}


def _lower_of(a: tuple[float, bool], b: tuple[float, bool]) -> tuple[float, bool]:
    """The lower value of those with enough pairs; with none, the lower value, not enough."""
    enough = [v for v, ok in (a, b) if ok]
    return (min(enough), True) if enough else (min(a[0], b[0]), False)


def steps_from_tiers(ppo_tiers: Mapping[str, str], rm_tiers: Mapping[str, str]) -> dict[str, int]:
    """``s_d`` for every sub-domain from the attribution table."""
    return {d: ATTRIBUTION[(ppo_tiers[d], rm_tiers[d])] for d in ppo_tiers}


def update_weights(
    weights: Mapping[str, float],
    steps: Mapping[str, int],
    initial: Mapping[str, float],
    cfg: ControllerConfig,
) -> dict[str, float]:
    """``w_d ← w_d·exp(η·s_d)``, floored at ``weight_floor × w_d⁰``, renormalised to sum 1.

    ``weights`` and ``initial`` are shares (each sums to 1). The floor is applied before the
    renormalisation and again after it (a renormalisation can push a floored weight back under
    its floor); iterating to a fixed point keeps every weight at or above its floor exactly.
    """
    init = _normalised(initial)
    raw = {d: weights[d] * math.exp(cfg.eta * steps.get(d, 0)) for d in weights}
    floor = {d: cfg.weight_floor * init[d] for d in weights}
    return _floor_and_normalise(raw, floor)


def _floor_and_normalise(raw: Mapping[str, float], floor: Mapping[str, float]) -> dict[str, float]:
    """The shares ``w`` with ``Σw = 1``, ``w_d ≥ floor_d``, and the free ones proportional to
    ``raw`` (water-filling: pin the weights under their floor, rescale the rest, repeat)."""
    pinned: set[str] = set()
    while True:
        free_mass = 1.0 - sum(floor[d] for d in pinned)
        free_raw = sum(v for d, v in raw.items() if d not in pinned)
        out = {d: floor[d] if d in pinned else raw[d] * free_mass / free_raw for d in raw}
        under = {d for d in raw if d not in pinned and out[d] < floor[d]}
        if not under:
            return out
        pinned |= under


def _normalised(weights: Mapping[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    if total <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError(
            f"mixture weights: expected non-negative with a positive sum, got {weights}"
        )
    return {d: w / total for d, w in weights.items()}


def next_beta(beta: float, cfg: ControllerConfig) -> float:
    """``β_{k+1} = max(β_min, decay·β_k)``."""
    return max(cfg.beta_min, cfg.beta_decay * beta)


@dataclass
class Decision:
    """What the controller decided after one round's evaluation (all JSON-serialisable)."""

    round: int
    gain: dict[str, float]
    alignment: dict[str, float]
    ppo_tiers: dict[str, str]
    rm_tiers: dict[str, str]
    steps: dict[str, int]
    weights_before: dict[str, float]
    weights: dict[str, float]
    weight_change: float  # ‖Δw‖₁
    beta_used: float
    next_beta: float
    overall_gain: float
    stop: bool
    stop_reason: str | None
    # Both alignments, whichever the RM tier used (empty in decisions written before they were
    # measured; those used the labelled one).
    alignment_labelled: dict[str, float] = field(default_factory=dict)
    alignment_on_policy: dict[str, float] = field(default_factory=dict)
    alignment_source: str = "labelled"

    def to_dict(self) -> dict:
        return asdict(self)


def stop_reason(
    steps: Mapping[str, int],
    weight_change: float,
    overall_gain: float,
    previous_gain: float | None,
    round_index: int,
    max_rounds: int,
    cfg: ControllerConfig,
) -> str | None:
    """Why the loop stops after this round, or ``None`` to go on (docs/methods.md §4 conditions)."""
    if round_index >= max_rounds:
        return f"round limit ({max_rounds})"
    if not cfg.early_stop:
        return None
    if all(s == 0 for s in steps.values()) or weight_change < cfg.stop_delta:
        return "mixture unchanged"
    if previous_gain is not None and overall_gain - previous_gain < cfg.min_gain:
        return (
            f"no gain: overall net win {overall_gain:+.3f} vs {previous_gain:+.3f} last round "
            f"(needs +{cfg.min_gain:.3f})"
        )
    return None


@dataclass
class RoundMeasurements:
    """One round's evaluation per sub-domain, as fractions, with how many eval prompts / pairs
    each rests on: ``gain`` G_d (net win rate vs SFT), ``alignment`` (RM accuracy on labelled
    pairs), ``on_policy_alignment`` (on the round's decisive judged pairs; counts = decisive
    pairs), and the overall net win rate."""

    gain: dict[str, float]
    gain_counts: dict[str, int]
    alignment: dict[str, float]
    alignment_counts: dict[str, int]
    overall_gain: float
    on_policy_alignment: dict[str, float] = field(default_factory=dict)
    on_policy_counts: dict[str, int] = field(default_factory=dict)


def decide(
    round_index: int,
    measured: RoundMeasurements,
    weights: Mapping[str, float],
    initial: Mapping[str, float],
    beta: float,
    previous_gain: float | None,
    max_rounds: int,
    cfg: ControllerConfig,
) -> Decision:
    """One round's decision. ``round_index`` is the round just evaluated (0 = PPO pre-training),
    ``max_rounds`` the number of improvement rounds, ``weights``/``initial`` the mixture used this
    round and in round 0, ``previous_gain`` the last round's overall net win (none in round 0)."""
    # A sub-domain without measurements has a count of 0, hence a medium tier.
    gain = {d: measured.gain.get(d, 0.0) for d in weights}
    alignment, enough = alignment_for_tiers(measured, list(weights), cfg)
    ppo_tiers = tiers_for(gain, measured.gain_counts, cfg.ppo_good, cfg.ppo_medium, cfg)
    flags = {d: int(ok) for d, ok in enough.items()}
    rm_tiers = tiers_for(alignment, flags, cfg.rm_good, cfg.rm_medium, cfg, min_count=1)
    steps = steps_from_tiers(ppo_tiers, rm_tiers)
    before = _normalised(weights)
    after = update_weights(before, steps, initial, cfg)
    change = sum(abs(after[d] - before[d]) for d in before)
    overall = measured.overall_gain
    reason = stop_reason(steps, change, overall, previous_gain, round_index, max_rounds, cfg)
    return Decision(
        round=round_index,
        gain=gain,
        alignment=alignment,
        ppo_tiers=ppo_tiers,
        rm_tiers=rm_tiers,
        steps=steps,
        weights_before=before,
        weights=after,
        weight_change=change,
        beta_used=beta,
        next_beta=next_beta(beta, cfg),
        overall_gain=overall,
        stop=reason is not None,
        stop_reason=reason,
        alignment_labelled={d: measured.alignment.get(d, 0.0) for d in weights},
        alignment_on_policy={d: measured.on_policy_alignment.get(d, 0.0) for d in weights},
        alignment_source=cfg.rm_alignment,
    )
