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

**Policy for bad scores (the one place: :func:`check_scores`).** A source that raises, returns
the wrong number of scores, or returns something that is not a number or None, is always a
:class:`~rm.errors.RewardError` naming the source (its name and its ``rewards[k]`` spec) and what
was expected; the command line reports it as one line with exit status 2. A ``None``, NaN or ±inf
score is, by default (``on_invalid: error``), such an error naming the samples and an example
value; with ``on_invalid: drop`` on that source the sample is dropped instead and counted
(``RewardScores.dropped[source]``): :attr:`RewardScores.kept` marks the samples that remain, and
every mean of scores (PPO's ``objective/scores``, ``reward/<name>``, ``eval/score``) is taken over
the kept samples only (:func:`kept_mean`); PPO logs the dropped share and count and trains on the
kept samples only.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import numbers
import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from align.core.chat_formats import ChatFormat, as_conversation, get_chat_format
from align.core.data import messages_of
from align.core.models import load_pretrained
from rm.errors import RewardError
from rm.model import last_token_scores, require_safetensors
from rm.remote import RemoteRewardModel
from rm.rules import make_rule
from rm.spec import RewardSpec, as_spec, as_specs


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


def required_columns(fn: Callable) -> tuple[str, ...]:
    """The dataset columns a reward function declares it reads (its ``required_columns``
    attribute, looked up through :class:`PythonReward` and :class:`WeightedReward` wrappers)."""
    while fn is not None:
        declared = getattr(fn, "required_columns", None)
        if declared:
            return tuple(declared)
        fn = getattr(fn, "fn", None)
    return ()


def check_reward_columns(rewards: Sequence, rows: Sequence[Mapping], source: str) -> None:
    """Before any generation: a :class:`RewardError` naming ``source`` (the prompts file), the
    column and the reward when records lack a column a reward declares it reads.

    ``rewards``: :class:`WeightedReward` components or plain reward functions.
    """
    for reward in rewards:
        name = getattr(reward, "name", None) or getattr(reward, "__name__", "reward")
        for column in required_columns(reward):
            missing = [k for k, r in enumerate(rows) if r.get(column) is None]
            if not missing:
                continue
            have = sorted({k for r in rows for k in r})
            which = "no record has it" if len(missing) == len(rows) else f"rows {missing[:10]}"
            raise RewardError(
                f"{source}: column '{column}' missing ({which}; columns: {', '.join(have)}), "
                f"needed by reward function '{name}'{_where(getattr(reward, 'source', ''))}"
            )


class RewardTypeError(RewardError, TypeError):
    """A reward source returned a value of the wrong type (a user error and a ``TypeError``)."""


def _where(source: str) -> str:
    return f" ({source})" if source else ""


def _check_scores(
    name: str, scores: Sequence, expected: int, source: str = ""
) -> list[float | None]:
    """``scores`` as floats (None kept); a :class:`RewardError` naming ``name`` and ``source``
    for a wrong count or a value that is neither a real number nor None."""
    if len(scores) != expected:
        raise RewardError(
            f"reward function '{name}' returned {len(scores)} scores for {expected} samples"
            f"{_where(source)}; expected one score per completion, in order"
        )
    out = []
    for k, s in enumerate(scores):
        if s is not None and (isinstance(s, bool) or not isinstance(s, numbers.Real)):
            raise RewardTypeError(
                f"reward function '{name}': score {k} is {s!r}, expected a number or None"
                f"{_where(source)}"
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
        fn = getattr(module, attr)
    except (ImportError, AttributeError, FileNotFoundError) as err:
        raise RewardError(f"reward function spec '{spec}': {err}") from err
    except Exception as err:  # the module's own code failed while importing
        raise RewardError(
            f"reward function spec '{spec}': importing {module_name} raised "
            f"{type(err).__name__}: {err}"
        ) from err
    if not callable(fn):
        raise RewardError(f"reward function spec '{spec}': {attr} is not callable")
    return fn


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


def trl_completions(prompts: Sequence, completions: Sequence) -> list:
    """Completions as TRL hands them to reward functions: a conversational prompt's text
    completion becomes ``[{"role": "assistant", "content": text}]``; the rest stay as they are."""
    return [
        [{"role": "assistant", "content": c}] if isinstance(p, list) and isinstance(c, str) else c
        for p, c in zip(prompts, completions, strict=True)
    ]


def is_async_callable(fn: Callable) -> bool:
    """Whether calling ``fn`` gives a coroutine (an ``async def`` function or ``__call__``)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 (a callable object's async __call__)
    )


def run_coroutine(coro: Coroutine):
    """Run ``coro`` to completion from synchronous code, in a thread of its own when this
    thread already runs an event loop (``asyncio.run`` refuses to nest)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class PythonReward:
    """Wraps a plain callable (or a ``module:function`` spec) and checks what it returns.

    The function is called in TRL's convention: ``prompts``, ``completions`` (conversational for
    conversational prompts, see :func:`trl_completions`) and every dataset column, plus what the
    caller offers (PPO: ``completion_ids``, ``trainer_state``). ``async def`` functions are
    awaited; :func:`score_rewards` awaits several of them concurrently.
    """

    def __init__(self, fn: Callable | str, name: str | None = None) -> None:
        self.spec = f"fn '{fn}'" if isinstance(fn, str) else ""
        self.fn = load_callable(fn) if isinstance(fn, str) else fn
        self.__name__ = name or getattr(self.fn, "__name__", type(self.fn).__name__)
        self.is_async = is_async_callable(self.fn)

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]:
        if self.is_async:
            return run_coroutine(self.acall(prompts, completions, **columns))
        trl_style = trl_completions(prompts, completions)
        scores = call_reward(self.fn, self.__name__, prompts, trl_style, columns, self.spec)
        return self._checked(scores, len(completions))

    async def acall(self, prompts: list, completions: list, **columns) -> list[float | None]:
        """Await an ``async def`` reward function (errors worded as :func:`call_reward`'s)."""
        trl_style = trl_completions(prompts, completions)
        try:
            scores = await self.fn(prompts=prompts, completions=trl_style, **columns)
        except RewardError:
            raise
        except Exception as err:
            raise _raised(self.__name__, self.spec, err) from err
        return self._checked(scores, len(completions))

    def _checked(self, scores, expected: int) -> list[float | None]:
        scores = _as_list(self.__name__, scores, self.spec)
        return _check_scores(self.__name__, scores, expected, self.spec)


def call_reward(
    fn: Callable, name: str, prompts: list, completions: list, columns: Mapping, source: str = ""
):
    """``fn(prompts=, completions=, **columns)``; whatever it raises (other than a
    :class:`RewardError`, already worded) becomes a :class:`RewardError` naming ``name`` and
    ``source`` (the cause stays chained for ``ALIGN_DEBUG=1``)."""
    try:
        return fn(prompts=prompts, completions=completions, **columns)
    except RewardError:
        raise
    except Exception as err:
        raise _raised(name, source, err) from err


def _raised(name: str, source: str, err: Exception) -> RewardError:
    detail = " ".join(str(err).split()) or "(no message)"
    return RewardError(
        f"reward function '{name}'{_where(source)} raised {type(err).__name__}: {detail}"
    )


def _as_list(name: str, raw, source: str = "") -> Sequence:
    """A reward function's return value as a sequence (tensors and arrays via ``tolist``)."""
    if hasattr(raw, "tolist") and not isinstance(raw, str | bytes):
        raw = raw.tolist()
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise RewardTypeError(
            f"reward function '{name}' returned {type(raw).__name__}, expected a list of "
            f"numbers (one per completion){_where(source)}"
        )
    return raw


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
        cls,
        path: str | Path,
        trust_remote_code: bool = False,
        normalize: bool = False,
        dtype: torch.dtype | None = None,
        attn_implementation: str | None = None,
        **kwargs,
    ):
        """Load weights from safetensors only; remote code runs only when asked for.

        ``normalize`` z-scores every score with the mean/std stored in ``score_stats.json``
        (:func:`read_score_stats`). ``dtype`` / ``attn_implementation``: as transformers'
        (None: its default). Under DeepSpeed ZeRO-3 the model loads partitioned
        (:func:`align.core.models.load_pretrained`) and needs a DeepSpeed engine to run.
        """
        stats = read_score_stats(path) if normalize else None
        require_safetensors(path)
        # lazy: transformers' Auto classes (~2 s) stay off 'align eval gsb --help' (via eval.judges)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = load_pretrained(
            AutoModelForSequenceClassification,
            path,
            "model",
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            attn_implementation=attn_implementation,
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
        return self._normalized(self.score_ids(self.encode(prompts, completions)))

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """Scores of conversations already rendered to text (OpenRLHF's queries), tokenized as
        they are and left-truncated like :meth:`encode`."""
        ids = [
            self.tokenizer(t, add_special_tokens=False)["input_ids"][-self.max_length :]
            for t in texts
        ]
        return self._normalized(self.score_ids(ids))

    def _normalized(self, scores: torch.Tensor) -> list[float]:
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
    name: str, raw: Sequence, expected: int, on_invalid: str = "error", source: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bad-score policy, in one place: ``(scores [N] float32, valid [N] bool)``.

    Wrong count, or a value that is neither a number nor None: always a :class:`RewardError`
    naming the source (``name``, and ``source``: its ``rewards[k]`` spec when known).
    None / NaN / ±inf: such an error naming the samples (``on_invalid="error"``), or, with
    ``"drop"``, the sample is marked invalid (its score set to 0) for the caller to drop.
    """
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid: expected one of {ON_INVALID}, got {on_invalid!r}")
    raw = _as_list(name, raw, source)
    values = _check_scores(name, raw, expected, source)
    valid = [v is not None and math.isfinite(v) for v in values]
    bad = [k for k, ok in enumerate(valid) if not ok]
    if bad and on_invalid == "error":
        raise RewardError(
            f"reward function '{name}' returned None/NaN/inf for samples {bad[:10]} "
            f"(e.g. {raw[bad[0]]!r}){_where(source)}; expected a finite number for every "
            "sample, or set on_invalid: drop on this reward to drop such samples"
        )
    scores = torch.tensor([v if ok else 0.0 for v, ok in zip(values, valid)], dtype=torch.float32)
    return scores, torch.tensor(valid, dtype=torch.bool)


@dataclass
class WeightedReward:
    """One component of a combined reward.

    ``on_invalid``: ``"error"`` or ``"drop"`` (see :func:`check_scores`). ``normalize``: z-score
    this component over the batch's kept samples before weighting ("normalise then sum").
    ``source``: where it was configured (``"rewards[0]: type python, fn 'f.py:g'"``), for errors.
    """

    name: str
    fn: Callable[..., list]
    weight: float
    on_invalid: str = "error"
    normalize: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        if self.on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid: expected one of {ON_INVALID}, got {self.on_invalid!r}")


@dataclass
class RewardScores:
    """``total [N]`` (0 for dropped samples), raw ``parts`` per component (before normalisation
    and weights), ``kept [N]`` bool, and ``dropped`` — samples each component invalidated.

    A dropped sample's total and parts are placeholders (0 where its source gave no number):
    average them with :func:`kept_mean` (or :meth:`means`), never a plain ``mean()``.
    """

    total: torch.Tensor
    parts: dict[str, torch.Tensor]
    kept: torch.Tensor
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n_dropped(self) -> int:
        """Samples dropped by any component."""
        return int((~self.kept).sum())

    def means(self) -> dict[str, float]:
        """``{"score": mean total, <name>: mean raw part, ...}`` over the kept samples only
        (NaN when none is kept)."""
        out = {"score": kept_mean(self.total, self.kept)}
        out.update({name: kept_mean(part, self.kept) for name, part in self.parts.items()})
        return out


def kept_mean(values: torch.Tensor, kept: torch.Tensor) -> float:
    """Mean of ``values [N]`` over the samples where ``kept [N]`` (bool) is True; NaN if none."""
    n = int(kept.sum())
    return float(values[kept].double().sum() / n) if n else float("nan")


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
    extras: Mapping | None = None,
) -> RewardScores:
    """Call every component, apply the bad-score policy, weight and sum.

    ``normalize``: ``"none"`` (each component as configured by its own ``normalize`` flag),
    ``"components"`` (z-score every component over the kept samples, then the weighted sum) or
    ``"sum"`` (weighted sum, then z-score). A sample any component drops is dropped from all.
    ``extras``: more keywords for Python reward functions only, as TRL gives them
    (``completion_ids``, ``trainer_state``).
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize: expected one of {NORMALIZE}, got {normalize!r}")
    n = len(completions)
    kept = torch.ones(n, dtype=torch.bool)
    parts, dropped = {}, {}
    raws = _call_all(rewards, prompts, completions, columns, extras or {})
    for r in rewards:
        parts[r.name], valid = check_scores(r.name, raws[r.name], n, r.on_invalid, r.source)
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


def _call_all(
    rewards: list[WeightedReward], prompts: list, completions: list, columns: dict, extras: Mapping
) -> dict[str, object]:
    """Each component's raw scores by name; ``async def`` Python functions run concurrently."""
    raws, waiting = {}, []
    for r in rewards:
        cols = {**columns, **extras} if isinstance(r.fn, PythonReward) else columns
        if isinstance(r.fn, PythonReward) and r.fn.is_async:
            waiting.append((r.name, r.fn.acall(prompts, completions, **cols)))
        else:
            raws[r.name] = call_reward(r.fn, r.name, prompts, completions, cols, r.source)
    if waiting:

        async def together():
            return await asyncio.gather(*(coro for _, coro in waiting))

        raws.update(zip([name for name, _ in waiting], run_coroutine(together()), strict=True))
    return raws


def combine_rewards(
    rewards: list[WeightedReward],
    prompts: list,
    completions: list,
    columns: dict,
    normalize: str = "none",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total [N], parts)`` of :func:`score_rewards`; dropped samples score 0 here, so callers
    that honour drops, or average scores, use :func:`score_rewards` and its ``kept`` mask."""
    out = score_rewards(rewards, prompts, completions, columns, normalize)
    return out.total, out.parts


# ------------------------------------------------------------------ config

def _python_source(spec: dict, stored: bool):
    return PythonReward(spec.pop("fn"))


def _model_source(spec: dict, stored: bool):
    path = spec.pop("path")
    return LocalRewardModel.from_pretrained(
        path, normalize=stored, name=f"model:{Path(path).name}", **spec
    )


def _http_source(spec: dict, stored: bool):
    token = spec.pop("token", None)
    env = spec.pop("token_env", None)
    if env is not None:
        if env not in os.environ:
            raise ValueError(f"token_env: environment variable {env} is not set")
        token = os.environ[env]
    return RemoteRewardModel(spec.pop("url"), token=token, **spec)


def _rule_source(spec: dict, stored: bool):
    return make_rule(spec.pop("rule"), **spec)


SOURCES: dict[str, Callable[[dict, bool], Callable]] = {
    "python": _python_source,
    "model": _model_source,
    "http": _http_source,
    "rule": _rule_source,
}


def _from_spec(
    k: int, entry: RewardSpec | Mapping, on_invalid: str, model_options: Mapping
) -> WeightedReward:
    spec = as_spec(k, entry)
    source = spec.describe(k)
    options = spec.options()
    if spec.type == "model":  # the run's load dtype / attention; the entry's own win
        options = {**model_options, **options}
    try:
        fn = SOURCES[spec.type](options, spec.normalize in (True, "stored"))
    except ValueError as err:  # worded by the source; say which entry it was
        raise RewardError(f"rewards[{k}] (type {spec.type}): {err}") from err
    if isinstance(fn, PythonReward):
        fn.spec = source
    return WeightedReward(
        spec.name or getattr(fn, "__name__", f"reward_{k}"),
        fn,
        spec.weight,
        on_invalid=spec.on_invalid or on_invalid,
        normalize=spec.normalize == "batch",
        source=source,
    )


def rewards_from_config(
    specs: Sequence[RewardSpec | Mapping],
    on_invalid: str = "error",
    model_options: Mapping | None = None,
) -> list[WeightedReward]:
    """``rewards:`` config entries (:class:`~rm.spec.RewardSpec`, or mappings of its fields) →
    components. Every entry has ``type`` and optional ``weight`` (1.0), ``name``, ``on_invalid``
    (``error`` | ``drop``; unset = the ``on_invalid`` argument) and ``normalize``:

    - ``{type: python, fn: 'pkg.mod:f' | 'path/file.py:f'}``
    - ``{type: model, path: DIR, chat_format: hf, batch_size: 16, max_length: 1024,
      normalize: true | batch}`` (``true``: the stored ``score_stats.json`` mean/std)
    - ``{type: http, url: URL, token_env: VAR | token: T, batch_size: 64, timeout: 60,
      retries: 3, backoff: 0.5, columns: [category]}``
    - ``{type: rule, rule: tiny | mcq | length | format, ...options}`` (see :mod:`rm.rules`)

    ``normalize: batch`` (any type) z-scores that component over the batch before weighting.
    Component names must be unique (they name the logged ``reward/<name>`` metrics). A single
    mapping (``--rewards '{type: rule, rule: tiny}'``) counts as a list of one. Mistakes are
    :class:`RewardError` naming the entry and the field. ``model_options`` (``dtype``,
    ``attn_implementation``) go to every ``type: model`` entry's ``from_pretrained``.
    """
    out = [
        _from_spec(k, spec, on_invalid, model_options or {})
        for k, spec in enumerate(as_specs(specs))
    ]
    names = [r.name for r in out]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise RewardError(f"rewards: duplicate names {duplicated}; give each a distinct name")
    return out
