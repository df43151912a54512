"""Category mixtures: prompt sampling that honours per-category weights (PEI changes them between
rounds), the initial shares of SFT and pretraining, and epochs composed by weight."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import torch

K = TypeVar("K", bound=Hashable)


class MixtureSampler:
    """Draws row indices so that each category's share of draws follows its weight.

    A row of category ``c`` is drawn with probability ``w_c / (Σ_k w_k · n_c)``: categories get
    ``w_c / Σ w`` of the draws whatever their sizes, rows within a category are uniform. Draws are
    with replacement from a seeded generator whose state is checkpointed.
    """

    def __init__(
        self, categories: Sequence[str], weights: Mapping[str, float] | None = None, seed: int = 0
    ) -> None:
        if not categories:
            raise ValueError("the prompt set is empty: nothing to sample")
        self.categories = list(categories)
        self.generator = torch.Generator().manual_seed(seed)
        self.set_weights(weights)

    def set_weights(self, weights: Mapping[str, float] | None) -> None:
        counts = Counter(self.categories)
        weights = dict(weights) if weights else {c: 1.0 for c in counts}
        unknown = set(weights) - set(counts)
        if unknown:
            raise ValueError(
                f"category_weights: unknown categories {sorted(unknown)}; "
                f"the prompts have {sorted(counts)}"
            )
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(
                f"category_weights: expected non-negative weights with a positive "
                f"sum, got {weights}"
            )
        self.weights = {c: float(weights.get(c, 0.0)) for c in counts}
        probs = torch.tensor(
            [self.weights[c] / counts[c] for c in self.categories], dtype=torch.float64
        )
        self.probs = probs / probs.sum()

    def sample(self, n: int) -> list[int]:
        """``n`` row indices."""
        return torch.multinomial(self.probs, n, replacement=True, generator=self.generator).tolist()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "weights": dict(self.weights)}

    def load_state_dict(self, state: dict) -> None:
        self.set_weights(state["weights"])
        self.generator.set_state(state["generator"])


def initial_mix(
    counts: Mapping[str, int],
    general_categories: Sequence[str] = (),
    general_finance_ratio: float | None = None,
    weights: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Initial category shares (sum 1).

    ``weights`` given: those, normalised. Else with ``general_finance_ratio`` r (XuanYuan-70B:
    4 [S]): the general categories share r/(r+1) and the others 1/(r+1), each group split in
    proportion to row counts. Else: proportional to row counts.
    """
    if weights:
        unknown = set(weights) - set(counts)
        if unknown:
            raise ValueError(f"category_weights: unknown categories {sorted(unknown)}")
        total = sum(weights.get(c, 0.0) for c in counts)
        if total <= 0 or any(w < 0 for w in weights.values()):
            raise ValueError(f"category_weights: expected >= 0 with a positive sum, got {weights}")
        return {c: weights.get(c, 0.0) / total for c in counts}
    if general_finance_ratio is None:
        total = sum(counts.values())
        return {c: n / total for c, n in counts.items()}
    general = [c for c in counts if c in set(general_categories)]
    finance = [c for c in counts if c not in set(general_categories)]
    if not general or not finance or general_finance_ratio <= 0:
        raise ValueError(
            "general_finance_ratio: expected > 0 with both general_categories and other "
            f"categories present, got ratio {general_finance_ratio}, general {general}"
        )
    shares = {}
    for group, share in ((general, general_finance_ratio), (finance, 1.0)):
        size = sum(counts[c] for c in group)
        for c in group:
            shares[c] = share / (general_finance_ratio + 1) * counts[c] / size
    return shares


def largest_remainder(weights: Mapping[K, float], total: int) -> dict[K, int]:
    """Split ``total`` into integers proportional to ``weights`` (Hamilton's method).

    Each key gets ``floor(total·w/Σw)``; the units left go to the largest fractional remainders
    (ties: larger weight, then key). Every share is within 1 of its exact proportion.
    """
    if total < 0:
        raise ValueError(f"total: expected >= 0, got {total}")
    positive = {k: float(w) for k, w in weights.items() if w > 0}
    out = dict.fromkeys(weights, 0)
    mass = sum(positive.values())
    if not positive or total == 0:
        return out
    exact = {k: total * w / mass for k, w in positive.items()}
    for k, x in exact.items():
        out[k] = math.floor(x)
    left = total - sum(out.values())
    order = sorted(exact, key=lambda k: (-(exact[k] - out[k]), -positive[k], k))
    for k in order[:left]:
        out[k] += 1
    return out


def epoch_composition(
    row_categories: Sequence[int], weights: Sequence[float], epoch_size: int, seed: int
) -> list[int]:
    """Row indices of one epoch, shuffled: category ``k`` gets its ``weights[k]`` share of
    ``epoch_size`` (largest remainder), drawn without replacement from its rows and cycling
    through them (reshuffled each pass) when the share exceeds them."""
    gen = torch.Generator().manual_seed(seed)
    members: dict[int, list[int]] = {}
    for row, k in enumerate(row_categories):
        members.setdefault(int(k), []).append(row)
    present = [w if k in members else 0.0 for k, w in enumerate(weights)]
    quotas = largest_remainder(dict(enumerate(present)), epoch_size)
    chosen: list[int] = []
    for k, quota in quotas.items():
        rows = members.get(k, [])
        while quota > 0:
            take = min(quota, len(rows))
            perm = torch.randperm(len(rows), generator=gen)[:take].tolist()
            chosen += [rows[i] for i in perm]
            quota -= take
    return [chosen[i] for i in torch.randperm(len(chosen), generator=gen).tolist()]
