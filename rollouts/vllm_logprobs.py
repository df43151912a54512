"""A vLLM logits processor that makes vLLM report the logprobs of the rollout contract.

:class:`~rollouts.base.SamplingParams` promises ``log_softmax(logits / T)`` of each sampled token,
before top-k / top-p truncation. vLLM offers either raw logprobs (``T = 1``) or "processed" ones,
taken after truncation and renormalised over the kept tokens. This processor runs after vLLM's
temperature scaling and before its top-k / top-p step and replaces each row by
``log_softmax(logits / T)``. A per-row constant shift changes neither the sampling distribution,
nor the argmax, nor which tokens top-k / top-p keep; with ``logprobs_mode="processed_logits"``
vLLM then reports, for the sampled token, exactly the untruncated tempered logprob.

Greedy requests bypass argmax-invariant processors in vLLM, so the engines send greedy decoding as
``temperature=1, top_k=1`` (the same token, and ``T = 1`` logprobs as the contract says).

This module imports vLLM; it is loaded by the engine (and by servers that ``align`` starts) by its
qualified name :data:`PROCESSOR`.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

PROCESSOR = "rollouts.vllm_logprobs:TemperedLogSoftmax"
LOGPROBS_MODE = "processed_logits"


class TemperedLogSoftmax(LogitsProcessor):
    """Rows of (already temperature-scaled) logits ``[B, V]`` → their log-softmax."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        del vllm_config, device, is_pin_memory  # stateless

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        del batch_update

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits - torch.logsumexp(logits, dim=-1, keepdim=True)
