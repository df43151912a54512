"""Reward functions in TRL's ``reward_funcs`` calling convention.

``f(prompts, completions, **columns) -> list[float | None]``: ``prompts`` and ``completions`` are
strings, or conversations (lists of ``{"role", "content"}`` messages) as TRL passes them for
conversational data; every other dataset column arrives as a keyword argument holding one value
per sample. ``None`` means "this function does not score this sample".
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from align.chat_formats import ChatFormat, get_chat_format
from rm.model import last_token_scores

Conversation = list[dict[str, str]]


@runtime_checkable
class RewardFunction(Protocol):
    __name__: str

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]: ...


def as_conversation(prompt: str | Conversation, completion: str | Conversation) -> Conversation:
    """One conversation: the prompt's turns followed by the completion's assistant turn(s)."""
    head = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    tail = (
        [{"role": "assistant", "content": completion}]
        if isinstance(completion, str)
        else list(completion)
    )
    return head + tail


def _check_scores(name: str, scores: Sequence, expected: int) -> list[float | None]:
    if len(scores) != expected:
        raise ValueError(
            f"reward function '{name}' returned {len(scores)} scores for {expected} samples"
        )
    out = []
    for k, s in enumerate(scores):
        if s is not None and (isinstance(s, bool) or not isinstance(s, int | float)):
            raise TypeError(
                f"reward function '{name}': score {k} is {s!r}, expected a number or None"
            )
        out.append(None if s is None else float(s))
    return out


def load_callable(spec: str) -> Callable:
    """``"package.module:function"`` → the function (for configs and the command line)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"reward function spec '{spec}': expected 'package.module:function'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reward function spec '{spec}': {err}") from err


class PythonReward:
    """Wraps a plain callable (or a ``module:function`` spec) and checks what it returns."""

    def __init__(self, fn: Callable | str, name: str | None = None) -> None:
        self.fn = load_callable(fn) if isinstance(fn, str) else fn
        self.__name__ = name or getattr(self.fn, "__name__", type(self.fn).__name__)

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]:
        scores = self.fn(prompts=prompts, completions=completions, **columns)
        return _check_scores(self.__name__, scores, len(completions))


class LocalRewardModel:
    """A sequence-classification reward model (one logit) scoring rendered conversations.

    The score is the logit at the last non-pad token. Conversations are rendered with
    ``chat_format`` (the tokenizer's own template by default) and truncated from the left to
    ``max_length`` tokens so the answer's end, where the score is read, is always kept.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        chat_format: ChatFormat | str = "hf",
        batch_size: int = 16,
        max_length: int = 1024,
        name: str = "reward_model",
    ) -> None:
        if model.config.num_labels != 1:
            raise ValueError(f"a reward model needs num_labels == 1, got {model.config.num_labels}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the reward model's tokenizer needs a pad token")
        self.model, self.tokenizer = model, tokenizer
        self.chat_format = (
            get_chat_format(chat_format) if isinstance(chat_format, str) else chat_format
        )
        self.batch_size, self.max_length = batch_size, max_length
        self.__name__ = name

    @classmethod
    def from_pretrained(cls, path: str | Path, trust_remote_code: bool = False, **kwargs):
        """Load weights from safetensors only; remote code runs only when asked for."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, use_safetensors=True, trust_remote_code=trust_remote_code
        )
        model.eval()
        return cls(model, tokenizer, **kwargs)

    def encode(self, prompts: list, completions: list) -> list[list[int]]:
        """Token ids of each rendered (prompt, completion) conversation, left-truncated."""
        ids = []
        for p, c in zip(prompts, completions, strict=True):
            text = self.chat_format.render(as_conversation(p, c), tokenizer=self.tokenizer)
            ids.append(
                self.tokenizer(text, add_special_tokens=False)["input_ids"][-self.max_length :]
            )
        return ids

    @torch.no_grad()
    def score_ids(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """``[N]`` float32 scores of token sequences (right-padded in batches)."""
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        out = []
        for i in range(0, len(sequences), self.batch_size):
            chunk = sequences[i : i + self.batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for k, s in enumerate(chunk):
                ids[k, : len(s)], mask[k, : len(s)] = torch.tensor(list(s)), 1
            out.append(last_token_scores(self.model, ids.to(device), mask.to(device)).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]:
        return self.score_ids(self.encode(prompts, completions)).tolist()


@dataclass
class WeightedReward:
    """One component of a combined reward."""

    name: str
    fn: Callable[..., list]
    weight: float


def combine_rewards(
    rewards: list[WeightedReward], prompts: list, completions: list[str], columns: dict
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the reward functions' scores ``[N]`` and each component's scores.

    A function returning ``None``, NaN or inf for a sample, or the wrong number of scores, is an
    error naming the function.
    """
    total = torch.zeros(len(completions), dtype=torch.float32)
    parts = {}
    for r in rewards:
        raw = r.fn(prompts=prompts, completions=completions, **columns)
        if len(raw) != len(completions):
            raise ValueError(
                f"reward function '{r.name}' returned {len(raw)} scores for "
                f"{len(completions)} completions"
            )
        bad = [k for k, s in enumerate(raw) if s is None or not math.isfinite(s)]
        if bad:
            raise ValueError(
                f"reward function '{r.name}' returned None/NaN/inf for samples "
                f"{bad[:10]} (e.g. {raw[bad[0]]!r})"
            )
        scores = torch.tensor(raw, dtype=torch.float32)
        parts[r.name] = scores
        total += r.weight * scores
    return total, parts


def rewards_from_config(specs: list[dict]) -> list[WeightedReward]:
    """``[{type: python, fn}, {type: model, path, chat_format?}]`` with optional ``weight``."""
    out = []
    for k, spec in enumerate(specs):
        spec = dict(spec)
        kind, weight = spec.pop("type", None), float(spec.pop("weight", 1.0))
        if kind == "python":
            fn = PythonReward(spec["fn"])
        elif kind == "model":
            fn = LocalRewardModel.from_pretrained(
                spec["path"], chat_format=spec.get("chat_format", "hf")
            )
        else:
            raise ValueError(f"rewards[{k}].type: expected 'python' or 'model', got {kind!r}")
        out.append(WeightedReward(getattr(fn, "__name__", f"reward_{k}"), fn, weight))
    return out
