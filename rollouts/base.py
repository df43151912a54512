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
        ids, mask = right_pad(self.completion_ids, pad_id)
        logprobs, _ = right_pad(self.logprobs, 0.0, torch.float32)
        return ids, logprobs, mask


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, L], attention_mask [B, L])`` with the padding on the left."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def right_pad(
    sequences: Sequence[Sequence], pad: float, dtype: torch.dtype = torch.long
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [B, L], mask [B, L] bool)`` with the padding on the right."""
    width = max((len(s) for s in sequences), default=0)
    values = torch.full((len(sequences), width), pad, dtype=dtype)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for i, s in enumerate(sequences):
        values[i, : len(s)] = torch.tensor(list(s), dtype=dtype)
        mask[i, : len(s)] = True
    return values, mask


@runtime_checkable
class RolloutEngine(Protocol):
    """Generates completions and follows the trainer's weights.

    An engine that every training process reaches (a server) sets ``shared = True``: the trainer
    then syncs it from the main process only, and the others wait for that sync. An engine that
    generates with its own copy of the weights (vLLM) sets ``holds_own_weights = True``: the
    trainer then never gathers its model whole for generation, and the engine's
    ``sync_weights`` takes the model as it is (ZeRO-3 partitioned) and syncs it layer by layer."""

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingParams, n: int = 1
    ) -> RolloutBatch:
        """Sample ``n`` completions for each prompt (token ids, no padding)."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine generate with ``model``'s current weights."""
        ...
