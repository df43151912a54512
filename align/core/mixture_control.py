"""Dynamic data mixture: move category weights by per-category held-out loss (docs/methods.md §6).

The sources say only: track per-category loss, reduce the share of converged or overfitting
categories, raise high-loss ones, per epoch (SFT) or per stage (pretraining) [S]. The controller
below is ours [P]:

1. Relative loss ``x_c = log(L_c / L_c⁰)``, with ``L_c⁰`` the category's held-out loss when the
   controller started (before training). A category that fell far (converged) has a low ``x_c``;
   one that barely moved (still high) a high ``x_c``.
2. Standardise across categories: ``z_c = (x_c − mean x) / std x`` (population std; all zeros
   when the categories moved alike, so only the *relative* progress shifts the mix).
3. Overfitting: a category whose held-out loss is above ``(1 + overfit_tolerance)`` × its best so
   far gets ``z_c = −max(1, |z_c|)``: it is treated at least like a one-σ converged category.
4. ``w_c ← w_c · exp(η z_c)`` (η = 0.3), then clamp to ``[0.5, 2] ×`` the initial weight and
   renormalise to sum 1 *within* the clamps (one common scale for the unclamped categories), so
   both the clamps and the normalisation hold after every update.

Everything here is pure (dicts of floats in, dicts out) except the small stateful
:class:`MixtureController` that remembers ``L⁰``, the best losses and the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

Weights = dict[str, float]


@dataclass(frozen=True)
class MixtureControlConfig:
    """Knobs of the controller; all [P]."""

    eta: float = field(default=0.3, metadata={"help": "Step size η of w ← w·exp(η z)."})
    min_factor: float = field(
        default=0.5, metadata={"help": "Lowest weight as a multiple of the initial weight."}
    )
    max_factor: float = field(
        default=2.0, metadata={"help": "Highest weight as a multiple of the initial weight."}
    )
    overfit_tolerance: float = field(
        default=0.01,
        metadata={"help": "Held-out loss above (1 + this) × its best marks a category overfit."},
    )

    def __post_init__(self) -> None:
        if self.eta < 0:
            raise ValueError(f"eta: expected >= 0, got {self.eta}")
        if not 0 <= self.min_factor <= 1 <= self.max_factor:
            raise ValueError(
                f"min_factor / max_factor: expected 0 <= min <= 1 <= max, "
                f"got {self.min_factor} / {self.max_factor}"
            )
        if self.overfit_tolerance < 0:
            raise ValueError(f"overfit_tolerance: expected >= 0, got {self.overfit_tolerance}")


def normalise(weights: Mapping[str, float]) -> Weights:
    """Weights scaled to sum 1; ``ValueError`` on negative weights or a zero sum."""
    total = sum(weights.values())
    if any(w < 0 for w in weights.values()) or total <= 0:
        raise ValueError(
            f"weights: expected non-negative values with a positive sum, got {weights}"
        )
    return {c: w / total for c, w in weights.items()}


def relative_loss_signal(
    start: Mapping[str, float],
    current: Mapping[str, float],
    best: Mapping[str, float] | None = None,
    overfit_tolerance: float = 0.01,
) -> Weights:
    """``z_c`` of steps 1-3 for every category of ``start``."""
    missing = set(start) - set(current)
    if missing:
        raise ValueError(f"losses: no current loss for categories {sorted(missing)}")
    for name, values in (("start", start), ("current", current)):
        bad = {c: v for c, v in values.items() if c in start and not v > 0}
        if bad:
            raise ValueError(f"{name} losses: expected positive values, got {bad}")
    x = {c: math.log(current[c] / start[c]) for c in start}
    mean = sum(x.values()) / len(x)
    std = math.sqrt(sum((v - mean) ** 2 for v in x.values()) / len(x))
    z = {c: (v - mean) / std if std > 1e-12 else 0.0 for c, v in x.items()}
    if best is not None:
        for c in z:
            if current[c] > (1 + overfit_tolerance) * best[c]:
                z[c] = -max(1.0, abs(z[c]))
    return z


def clamp_normalise(
    weights: Mapping[str, float],
    lower: Mapping[str, float],
    upper: Mapping[str, float],
    total: float = 1.0,
) -> Weights:
    """``clip(s·w_c, lower_c, upper_c)`` with the one scale ``s`` that makes them sum to ``total``.

    ``Σ clip(s·w)`` is non-decreasing and piecewise linear in ``s``: bisect for the set of
    categories left unclamped, then solve for ``s`` exactly on that set.
    """
    if sum(lower.values()) > total + 1e-12 or sum(upper.values()) < total - 1e-12:
        raise ValueError(f"clamps: no weights in [{lower}, {upper}] sum to {total}")

    def clipped(s: float) -> Weights:
        return {c: min(max(s * w, lower[c]), upper[c]) for c, w in weights.items()}

    lo, hi = 0.0, 1.0
    while sum(clipped(hi).values()) < total and hi < 1e300:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(clipped(mid).values()) < total else (lo, mid)
    out = clipped(hi)
    free = [c for c in weights if lower[c] < out[c] < upper[c]]
    if free:
        fixed = sum(v for c, v in out.items() if c not in free)
        scale = (total - fixed) / sum(weights[c] for c in free)
        out.update({c: weights[c] * scale for c in free})
    return out


def update_weights(
    weights: Mapping[str, float],
    initial: Mapping[str, float],
    z: Mapping[str, float],
    cfg: MixtureControlConfig,
) -> Weights:
    """Step 4: ``w·exp(η z)``, clamped to ``[min, max] × initial``, renormalised to sum 1."""
    initial = normalise(initial)
    moved = {c: weights[c] * math.exp(cfg.eta * z.get(c, 0.0)) for c in initial}
    lower = {c: cfg.min_factor * w for c, w in initial.items()}
    upper = {c: cfg.max_factor * w for c, w in initial.items()}
    return clamp_normalise(moved, lower, upper, total=1.0)


class MixtureController:
    """Remembers the initial weights, the losses at the start and the best losses so far."""

    def __init__(self, initial: Mapping[str, float], cfg: MixtureControlConfig | None = None):
        self.cfg = cfg or MixtureControlConfig()
        self.initial = normalise(initial)
        self.weights = dict(self.initial)
        self.start: Weights | None = None
        self.best: Weights | None = None
        self.history: list[dict] = []

    def observe_start(self, losses: Mapping[str, float]) -> None:
        """Held-out losses before training: the reference ``L⁰``."""
        self.start = {c: float(losses[c]) for c in self.initial}
        self.best = dict(self.start)

    def update(self, losses: Mapping[str, float]) -> Weights:
        """New weights after an epoch / stage whose held-out losses are ``losses``."""
        if self.start is None:
            raise ValueError("MixtureController.update before observe_start")
        z = relative_loss_signal(self.start, losses, self.best, self.cfg.overfit_tolerance)
        self.weights = update_weights(self.weights, self.initial, z, self.cfg)
        self.best = {c: min(self.best[c], float(losses[c])) for c in self.best}
        self.history.append({"losses": dict(losses), "z": z, "weights": dict(self.weights)})
        return dict(self.weights)

    def state_dict(self) -> dict:
        return {
            "initial": self.initial,
            "weights": self.weights,
            "start": self.start,
            "best": self.best,
            "history": self.history,
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.initial = dict(state["initial"])
        self.weights = dict(state["weights"])
        self.start = state["start"] and dict(state["start"])
        self.best = state["best"] and dict(state["best"])
        self.history = list(state["history"])
