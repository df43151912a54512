"""Rollouts with transformers ``generate``: small runs, tests, CPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from rollouts.base import FinishReason, RolloutBatch, SamplingParams, left_pad


class _LogprobRecorder(LogitsProcessor):
    """Records ``log_softmax(logits / T)`` of each sampled token without keeping vocab-wide logits.

    Placed before generate's temperature / top-k / top-p warpers, it sees the model's logits. At
    step t it learns the token sampled at step t-1 (the last column of ``input_ids``) and gathers
    its logprob from the distribution it kept; :meth:`finish` does the same for the last step.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.pending: torch.Tensor | None = None  # [N, V] logprobs of the step not yet sampled
        self.steps: list[torch.Tensor] = []  # each [N]

    def _gather(self, tokens: torch.Tensor) -> None:
        if self.pending is not None:
            self.steps.append(self.pending.gather(-1, tokens[:, None]).squeeze(-1))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._gather(input_ids[:, -1])
        self.pending = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """``[N, steps]`` logprobs of the generated tokens."""
        self._gather(last_tokens)
        self.pending = None
        return torch.stack(self.steps, dim=1)


class GenerateEngine:
    """A :class:`~rollouts.base.RolloutEngine` on ``model.generate``.

    Prompts are left-padded and generated ``batch_size`` prompts at a time (all at once when
    ``None``). The engine uses the trainer's module itself, so :meth:`sync_weights` only has to
    point at the module to use.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        pad_token_id: int,
        eos_token_ids: int | Sequence[int],
        batch_size: int | None = None,
    ) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.eos_token_ids = (
            [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
        )
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1 or None, got {batch_size}")
        self.batch_size = batch_size

    @classmethod
    def from_tokenizer(cls, model: torch.nn.Module, tokenizer, batch_size: int | None = None):
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token; generation could never stop")
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        return cls(model, pad, tokenizer.eos_token_id, batch_size)

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingParams, n: int = 1
    ) -> RolloutBatch:
        if n < 1:
            raise ValueError(f"n: expected >= 1, got {n}")
        if any(len(p) == 0 for p in prompt_token_ids):
            raise ValueError("every prompt needs at least one token")
        step = self.batch_size or max(len(prompt_token_ids), 1)
        parts = [
            self._generate_chunk(prompt_token_ids[i : i + step], sampling, n)
            for i in range(0, len(prompt_token_ids), step)
        ]
        return RolloutBatch(
            prompt_ids=[p for part in parts for p in part.prompt_ids],
            completion_ids=[c for part in parts for c in part.completion_ids],
            logprobs=[lp for part in parts for lp in part.logprobs],
            finish_reasons=[f for part in parts for f in part.finish_reasons],
            n=n,
        )

    def _generation_config(self, sampling: SamplingParams) -> GenerationConfig:
        warpers = (
            {}
            if sampling.greedy
            else {
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "top_k": sampling.top_k,
            }
        )
        return GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not sampling.greedy,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_ids,
            **warpers,
        )

    @torch.no_grad()
    def _generate_chunk(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingParams, n: int
    ) -> RolloutBatch:
        device = next(self.model.parameters()).device
        # Repeat each prompt n times ourselves: generate() refuses num_return_sequences > 1
        # when greedy, and this keeps the grouping explicit.
        ids, mask = left_pad([p for p in prompts for _ in range(n)], self.pad_token_id)
        recorder = _LogprobRecorder(sampling.logprob_temperature)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        # generate() fills unset fields from the model's own generation_config; swap in a neutral
        # one so defaults shipped with a checkpoint (repetition penalty, top_k=50, min_length)
        # cannot change what is sampled behind the trainer's back.
        was_training, shipped = self.model.training, self.model.generation_config
        self.model.eval()
        self.model.generation_config = GenerationConfig()
        try:
            out = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=self._generation_config(sampling),
                logits_processor=LogitsProcessorList([recorder]),
            )
        finally:
            self.model.generation_config = shipped
            self.model.train(was_training)
        new_tokens = out[:, ids.shape[1] :].cpu()
        logprobs = recorder.finish(out[:, -1]).cpu()
        return self._split(prompts, new_tokens, logprobs, n)

    def _split(
        self, prompts: Sequence[Sequence[int]], tokens: torch.Tensor, logprobs: torch.Tensor, n: int
    ) -> RolloutBatch:
        """Cut each row after its first EOS; rows without one ran out of length."""
        is_eos = torch.isin(tokens, torch.tensor(self.eos_token_ids))
        completion_ids, completion_logprobs, reasons = [], [], []
        for row, row_eos, row_lp in zip(tokens.tolist(), is_eos, logprobs.tolist()):
            hits = row_eos.nonzero()
            end = int(hits[0]) + 1 if len(hits) else len(row)
            reason: FinishReason = "stop" if len(hits) else "length"
            completion_ids.append(row[:end])
            completion_logprobs.append(row_lp[:end])
            reasons.append(reason)
        prompt_ids = [list(p) for p in prompts for _ in range(n)]
        return RolloutBatch(prompt_ids, completion_ids, completion_logprobs, reasons, n)
