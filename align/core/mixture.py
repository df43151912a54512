"""Prompt sampling that honours per-category mixture weights (PEI changes them between rounds)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import torch


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
