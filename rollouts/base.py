"""The rollout protocol: one batch type whatever engine generated it.

The trainer only sees :class:`RolloutEngine` and :class:`RolloutBatch`; transformers ``generate``,
colocated vLLM and a vLLM server all return the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` means greedy decoding.

    Logprobs are always those of the temperature-scaled distribution ``softmax(logits / T)``
    (``T = 1`` when greedy), before top-k / top-p truncation: what a PPO trainer recomputes.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k: expected >= 0 (0 = off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def logprob_temperature(self) -> float:
        return 1.0 if self.greedy else self.temperature


@dataclass
class RolloutBatch:
    """``n`` samples per prompt, grouped: sample ``i·n + j`` is the j-th answer to prompt ``i``.

    Every list has one entry per sample (B·n). ``completion_ids`` include the EOS token when the
    sample stopped (``finish_reasons[k] == "stop"``); ``logprobs[k][t]`` is the sampling logprob
    of ``completion_ids[k][t]``.
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[FinishReason]
    n: int = 1

    def __post_init__(self) -> None:
        sizes = {
            len(self.prompt_ids),
            len(self.completion_ids),
            len(self.logprobs),
            len(self.finish_reasons),
        }
        if len(sizes) != 1:
            raise ValueError(f"RolloutBatch fields have different lengths: {sorted(sizes)}")
        if any(len(c) != len(lp) for c, lp in zip(self.completion_ids, self.logprobs)):
            raise ValueError("RolloutBatch: each completion needs one logprob per token")

    def __len__(self) -> int:
        return len(self.completion_ids)

    def padded_completions(self, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ``(ids [B·n, T] long, logprobs [B·n, T] float, mask [B·n, T] bool)``."""
        width = max((len(c) for c in self.completion_ids), default=0)
        ids = torch.full((len(self), width), pad_id, dtype=torch.long)
        logprobs = torch.zeros((len(self), width), dtype=torch.float32)
        mask = torch.zeros((len(self), width), dtype=torch.bool)
        for k, (c, lp) in enumerate(zip(self.completion_ids, self.logprobs)):
            ids[k, : len(c)] = torch.tensor(c, dtype=torch.long)
            logprobs[k, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
            mask[k, : len(c)] = True
        return ids, logprobs, mask


@runtime_checkable
class RolloutEngine(Protocol):
    """Generates completions and follows the trainer's weights."""

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingParams, n: int = 1
    ) -> RolloutBatch:
        """Sample ``n`` completions for each prompt (token ids, no padding)."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine generate with ``model``'s current weights."""
        ...
