"""Answers of a policy to prompts, through any :class:`~rollouts.base.RolloutEngine`.

Prompts are strings, conversations (lists of ``{"role", "content"}``) or prompt records
(``{prompt | messages, category}``). With ``chat_template=True`` each is rendered with the
tokenizer's chat template (``apply_chat_template(..., add_generation_prompt=True)``) and encoded
without special tokens (the template carries them); with ``False`` a string prompt is encoded as
raw text with the tokenizer's special tokens (how base models are given exam prompts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from align.core.data import messages_of
from rollouts.base import RolloutEngine, SamplingParams


def as_messages(prompt) -> list[dict]:
    """A prompt record, a conversation or a string → the conversation."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Mapping):
        return messages_of(prompt)
    return [dict(m) for m in prompt]


def encode_prompts(
    tokenizer, prompts: Sequence, chat_template: bool = True, max_prompt_tokens: int | None = None
) -> tuple[list[list[int]], int]:
    """``(token ids per prompt, how many were left-truncated to max_prompt_tokens)``."""
    ids = []
    for p in prompts:
        if chat_template:
            text = tokenizer.apply_chat_template(
                as_messages(p), add_generation_prompt=True, tokenize=False
            )
            ids.append(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        else:
            if not isinstance(p, str):
                raise ValueError("chat_template=False needs text prompts, got a conversation")
            ids.append(tokenizer(p, verbose=False)["input_ids"])
    truncated = 0
    if max_prompt_tokens is not None:
        truncated = sum(len(x) > max_prompt_tokens for x in ids)
        ids = [x[-max_prompt_tokens:] for x in ids]
    return ids, truncated


def as_engine(engine_or_policy, tokenizer, batch_size: int | None = None) -> RolloutEngine:
    """A rollout engine as is; a ``torch.nn.Module`` policy wrapped in ``GenerateEngine``."""
    if isinstance(engine_or_policy, torch.nn.Module):
        # lazy: rollouts.hf_generate loads transformers, kept off 'align eval mcq --help'
        from rollouts.hf_generate import GenerateEngine

        return GenerateEngine.from_tokenizer(engine_or_policy, tokenizer, batch_size=batch_size)
    if not isinstance(engine_or_policy, RolloutEngine):
        raise TypeError(
            f"expected a RolloutEngine or a torch.nn.Module, got {type(engine_or_policy).__name__}"
        )
    return engine_or_policy


def generate_from_ids(
    engine: RolloutEngine,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    sampling: SamplingParams,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Decoded answers (special tokens skipped), ``batch_size`` prompts per engine call."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    answers: list[str] = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = [list(p) for p in prompt_ids[start : start + batch_size]]
        batch = engine.generate(chunk, sampling, n=1)
        answers += tokenizer.batch_decode(batch.completion_ids, skip_special_tokens=True)
        if on_batch is not None:
            on_batch(len(chunk))
    return answers


def generate_answers(
    engine_or_policy,
    tokenizer,
    prompts: Sequence,
    sampling: SamplingParams | None = None,
    *,
    batch_size: int = 32,
    chat_template: bool = True,
    max_prompt_tokens: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """One answer per prompt (greedy, 256 new tokens unless ``sampling`` says otherwise).

    ``engine_or_policy``: any :class:`~rollouts.base.RolloutEngine`, or a causal LM module
    (wrapped in :class:`~rollouts.hf_generate.GenerateEngine`). ``on_batch(k)`` is called after
    every batch of ``k`` prompts (progress bars).
    """
    sampling = sampling or SamplingParams(max_new_tokens=256, temperature=0.0)
    engine = as_engine(engine_or_policy, tokenizer, batch_size)
    ids, _ = encode_prompts(tokenizer, prompts, chat_template, max_prompt_tokens)
    return generate_from_ids(engine, tokenizer, ids, sampling, batch_size, on_batch)
