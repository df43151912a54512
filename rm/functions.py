"""Reward functions in TRL's ``reward_funcs`` calling convention.

``f(prompts, completions, **columns) -> list[float | None]``: ``prompts`` and ``completions`` are
strings, or conversations (lists of ``{"role", "content"}`` messages) as TRL passes them for
conversational data; every other dataset column arrives as a keyword argument holding one value
per sample. ``None`` means "this function does not score this sample".

Sources (all callables in that convention): :class:`PythonReward` (a callable, or
``package.module:function`` / ``path/to/file.py:function``), :class:`LocalRewardModel` (a
sequence-classification model on disk), :class:`rm.remote.RemoteRewardModel` (HTTP), and the rules
of :mod:`rm.rules`. :func:`rewards_from_config` builds them from ``rewards:`` config entries and
:func:`score_rewards` / :func:`combine_rewards` combine them with weights.

**Policy for bad scores (the one place: :func:`check_scores`).** A source returning the wrong
number of scores, or something that is not a number or None, is always an error naming the source.
A ``None``, NaN or ±inf score is, by default (``on_invalid: error``), an error naming the source,
the sample indices and an example value; with ``on_invalid: drop`` on that source the sample is
dropped instead and counted (``RewardScores.dropped[source]``; PPO logs ``reward/dropped`` and
trains on the remaining samples only).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from align.core.chat_formats import ChatFormat, get_chat_format
from align.core.data import messages_of
from rm.model import last_token_scores

Conversation = list[dict[str, str]]


@runtime_checkable
class RewardFunction(Protocol):
    __name__: str

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]: ...


def reward_inputs(rows: Sequence[Mapping]) -> tuple[list, dict[str, list]]:
    """``(prompts, columns)`` for reward functions from prompt records: each record's ``prompt``
    text (else its ``messages``), and every other field as a dataset column (None where absent)."""
    prompts = [r["prompt"] if r.get("prompt") else messages_of(r) for r in rows]
    keys = {k for r in rows for k in r} - {"prompt", "messages"}
    return prompts, {k: [r.get(k) for r in rows] for k in sorted(keys)}


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
        if s is not None and (isinstance(s, bool) or not isinstance(s, numbers.Real)):
            raise TypeError(
                f"reward function '{name}': score {k} is {s!r}, expected a number or None"
            )
        out.append(None if s is None else float(s))
    return out


def load_callable(spec: str) -> Callable:
    """``"package.module:function"`` or ``"path/to/file.py:function"`` → the function.

    A file path is loaded as a module of its own (named after the file's absolute path, so two
    files called ``reward.py`` do not collide).
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"reward function spec '{spec}': expected 'package.module:function' or "
            "'path/to/file.py:function'"
        )
    try:
        if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
            module = _module_from_file(Path(module_name))
        else:
            module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError, FileNotFoundError) as err:
        raise ValueError(f"reward function spec '{spec}': {err}") from err


def _module_from_file(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"no such file {path}")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    name = f"align_reward_{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        stats: dict | None = None,
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
        self.stats = stats
        if stats is not None and not stats["std"] > 0:
            raise ValueError(f"reward model '{name}': stored std must be > 0, got {stats['std']}")

    @classmethod
    def from_pretrained(
        cls, path: str | Path, trust_remote_code: bool = False, normalize: bool = False, **kwargs
    ):
        """Load weights from safetensors only; remote code runs only when asked for.

        ``normalize`` z-scores every score with the mean/std stored in ``score_stats.json``
        (:func:`read_score_stats`).
        """
        stats = read_score_stats(path) if normalize else None
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, use_safetensors=True, trust_remote_code=trust_remote_code
        )
        model.eval()
        return cls(model, tokenizer, stats=stats, **kwargs)

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
        scores = self.score_ids(self.encode(prompts, completions))
        if self.stats is not None:
            scores = (scores - self.stats["mean"]) / self.stats["std"]
        return scores.tolist()


def read_score_stats(path: str | Path) -> dict:
    """``{"mean", "std", "count"}`` from a reward model directory's ``score_stats.json``."""
    file = Path(path) / "score_stats.json"
    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: normalize needs the reward model's score statistics "
            '({"mean": float, "std": float, "count": int}, written by the UFRM trainer)'
        )
    try:
        stats = json.loads(file.read_text(encoding="utf-8"))
        mean, std = float(stats["mean"]), float(stats["std"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{file}: expected {{'mean': float, 'std': float}}: {err!r}") from err
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"{file}: expected finite mean and std > 0, got {mean}, {std}")
    return {"mean": mean, "std": std, "count": stats.get("count")}


ON_INVALID = ("error", "drop")


def check_scores(
    name: str, raw: Sequence, expected: int, on_invalid: str = "error"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bad-score policy, in one place: ``(scores [N] float32, valid [N] bool)``.

    Wrong count, or a value that is neither a number nor None: always an error naming the source.
    None / NaN / ±inf: an error naming the source and the samples (``on_invalid="error"``), or,
    with ``"drop"``, the sample is marked invalid (its score set to 0) for the caller to drop.
    """
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid: expected one of {ON_INVALID}, got {on_invalid!r}")
    if hasattr(raw, "tolist"):  # a tensor or an array
        raw = raw.tolist()
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise TypeError(f"reward function '{name}' returned {type(raw).__name__}, expected a list")
    values = _check_scores(name, raw, expected)
    valid = [v is not None and math.isfinite(v) for v in values]
    bad = [k for k, ok in enumerate(valid) if not ok]
    if bad and on_invalid == "error":
        raise ValueError(
            f"reward function '{name}' returned None/NaN/inf for samples {bad[:10]} "
            f"(e.g. {raw[bad[0]]!r}); set on_invalid: drop on this reward to drop such samples"
        )
    scores = torch.tensor([v if ok else 0.0 for v, ok in zip(values, valid)], dtype=torch.float32)
    return scores, torch.tensor(valid, dtype=torch.bool)


@dataclass
class WeightedReward:
    """One component of a combined reward.

    ``on_invalid``: ``"error"`` or ``"drop"`` (see :func:`check_scores`). ``normalize``: z-score
    this component over the batch's kept samples before weighting ("normalise then sum").
    """

    name: str
    fn: Callable[..., list]
    weight: float
    on_invalid: str = "error"
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid: expected one of {ON_INVALID}, got {self.on_invalid!r}")


@dataclass
class RewardScores:
    """``total [N]`` (0 for dropped samples), raw ``parts`` per component (before normalisation
    and weights), ``kept [N]`` bool, and ``dropped`` — samples each component invalidated."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]
    kept: torch.Tensor
    dropped: dict[str, int] = field(default_factory=dict)


def _zscore(x: torch.Tensor, kept: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / std`` over the kept entries (population std; 0 where not kept)."""
    if int(kept.sum()) < 2:
        return torch.zeros_like(x)
    sel = x[kept]
    return torch.where(kept, (x - sel.mean()) / (sel.std(unbiased=False) + eps), 0.0)


NORMALIZE = ("none", "components", "sum")


def score_rewards(
    rewards: list[WeightedReward],
    prompts: list,
    completions: list,
    columns: dict,
    normalize: str = "none",
) -> RewardScores:
    """Call every component, apply the bad-score policy, weight and sum.

    ``normalize``: ``"none"`` (each component as configured by its own ``normalize`` flag),
    ``"components"`` (z-score every component over the kept samples, then the weighted sum) or
    ``"sum"`` (weighted sum, then z-score). A sample any component drops is dropped from all.
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize: expected one of {NORMALIZE}, got {normalize!r}")
    n = len(completions)
    kept = torch.ones(n, dtype=torch.bool)
    parts, dropped = {}, {}
    for r in rewards:
        raw = r.fn(prompts=prompts, completions=completions, **columns)
        parts[r.name], valid = check_scores(r.name, raw, n, r.on_invalid)
        dropped[r.name] = int((~valid).sum())
        kept &= valid
    total = torch.zeros(n, dtype=torch.float32)
    for r in rewards:
        part = parts[r.name]
        if r.normalize or normalize == "components":
            part = _zscore(part, kept)
        total += r.weight * part
    if normalize == "sum":
        total = _zscore(total, kept)
    total = torch.where(kept, total, 0.0)
    return RewardScores(total, parts, kept, dropped)


def combine_rewards(
    rewards: list[WeightedReward],
    prompts: list,
    completions: list,
    columns: dict,
    normalize: str = "none",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total [N], parts)`` of :func:`score_rewards`; dropped samples score 0 here, so callers
    that honour drops use :func:`score_rewards` and its ``kept`` mask."""
    out = score_rewards(rewards, prompts, completions, columns, normalize)
    return out.total, out.parts


# ------------------------------------------------------------------ config

COMMON_KEYS = {"type", "weight", "name", "on_invalid", "normalize"}


def _python_source(spec: dict, stored: bool):
    return PythonReward(spec.pop("fn"))


def _model_source(spec: dict, stored: bool):
    path = spec.pop("path")
    return LocalRewardModel.from_pretrained(
        path, normalize=stored, name=f"model:{Path(path).name}", **spec
    )


def _http_source(spec: dict, stored: bool):
    from rm.remote import RemoteRewardModel

    token = spec.pop("token", None)
    env = spec.pop("token_env", None)
    if env is not None:
        if env not in os.environ:
            raise ValueError(f"token_env: environment variable {env} is not set")
        token = os.environ[env]
    return RemoteRewardModel(spec.pop("url"), token=token, **spec)


def _rule_source(spec: dict, stored: bool):
    from rm.rules import make_rule

    return make_rule(spec.pop("rule"), **spec)


SOURCES: dict[str, tuple[Callable[[dict, bool], Callable], set[str]]] = {
    "python": (_python_source, {"fn"}),
    "model": (
        _model_source,
        {"path", "chat_format", "batch_size", "max_length", "trust_remote_code"},
    ),
    "http": (
        _http_source,
        {"url", "token", "token_env", "batch_size", "timeout", "retries", "backoff", "columns"},
    ),
    "rule": (_rule_source, {"rule", "max_chars", "min_chars", "coef", "pattern", "penalty"}),
}
REQUIRED = {"python": "fn", "model": "path", "http": "url", "rule": "rule"}


def _from_spec(k: int, spec: dict) -> WeightedReward:
    spec = dict(spec)
    kind = spec.get("type")
    if kind not in SOURCES:
        raise ValueError(f"rewards[{k}].type: expected one of {sorted(SOURCES)}, got {kind!r}")
    build, keys = SOURCES[kind]
    unknown = set(spec) - keys - COMMON_KEYS
    if unknown:
        raise ValueError(f"rewards[{k}]: unknown keys {sorted(unknown)} for type {kind}")
    if REQUIRED[kind] not in spec:
        raise ValueError(f"rewards[{k}].{REQUIRED[kind]}: required for type {kind}")
    common = {key: spec.pop(key) for key in COMMON_KEYS if key in spec}
    normalize = common.get("normalize", False)
    allowed = (False, True, "stored", "batch") if kind == "model" else (False, "batch")
    if normalize not in allowed:
        raise ValueError(
            f"rewards[{k}].normalize: expected one of {allowed} for type {kind}, got {normalize!r}"
        )
    fn = build(spec, normalize in (True, "stored"))
    name = common.get("name") or getattr(fn, "__name__", f"reward_{k}")
    return WeightedReward(
        name,
        fn,
        float(common.get("weight", 1.0)),
        on_invalid=common.get("on_invalid", "error"),
        normalize=normalize == "batch",
    )


def rewards_from_config(specs: list[dict]) -> list[WeightedReward]:
    """``rewards:`` config entries → components. Every entry has ``type`` and optional ``weight``
    (1.0), ``name``, ``on_invalid`` (``error`` | ``drop``) and ``normalize``:

    - ``{type: python, fn: 'pkg.mod:f' | 'path/file.py:f'}``
    - ``{type: model, path: DIR, chat_format: hf, batch_size: 16, max_length: 1024,
      normalize: true | batch}`` (``true``: the stored ``score_stats.json`` mean/std)
    - ``{type: http, url: URL, token_env: VAR | token: T, batch_size: 64, timeout: 60,
      retries: 3, backoff: 0.5, columns: [category]}``
    - ``{type: rule, rule: tiny | mcq | length | format, ...options}`` (see :mod:`rm.rules`)

    ``normalize: batch`` (any type) z-scores that component over the batch before weighting.
    Component names must be unique (they name the logged ``reward/<name>`` metrics).
    """
    out = [_from_spec(k, spec) for k, spec in enumerate(specs)]
    names = [r.name for r in out]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"rewards: duplicate names {duplicated}; give each a distinct name")
    return out
