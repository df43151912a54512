"""Model directories the user names: checked before anything loads, loaded as safetensors only.

:func:`check_model_dir` turns the ways a model path can be wrong into one line that names the
config field and the path (a missing path, a file, no ``config.json``, pickle weights only);
:func:`load_pretrained` checks, then loads with ``use_safetensors=True``. Every loader of a
user-given model directory (PPO, filter, eval, reward models) goes through these two, so the
errors read the same everywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Files that hold safetensors weights (a full model, a sharded one, a PEFT adapter).
SAFETENSORS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
)
#: Pickle-format weights, which are never loaded (``torch.load`` runs code from the file).
PICKLE_FILES = (
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.bin",
)
CONFIG_FILES = ("config.json", "adapter_config.json")  # a model, or a PEFT adapter


def _architecture(directory: Path) -> str:
    """The model class named in ``config.json`` (for the conversion hint), else AutoModel."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        return str(config["architectures"][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return "AutoModel"


def _conversion_hint(directory: Path) -> str:
    arch, where = _architecture(directory), str(directory)
    return (
        f"convert once with: python -c \"import transformers as t; t.{arch}.from_pretrained("
        f"{where!r}, use_safetensors=False).save_pretrained({where!r})\""
    )


def check_model_dir(
    path: str | os.PathLike[str], field: str, *, weights: bool = True
) -> Path:
    """``path`` as a Path when it is a Hugging Face model directory with safetensors weights.

    ``field`` is the config field or option the path came from; every error message starts
    with it and names the path. ``weights=False`` checks the directory and its ``config.json``
    only (a rollout engine loads the weights itself, or a server already has them).

    Raises FileNotFoundError (no such path), NotADirectoryError (a file), ValueError (no
    ``config.json``; only ``pytorch_model.bin``-style pickle weights; no weights at all).
    Reads nothing but file names and, for the conversion hint, ``config.json``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{field}: {p}: no such model directory")
    if not p.is_dir():
        raise NotADirectoryError(f"{field}: {p}: expected a model directory, got a file")
    if not any((p / name).is_file() for name in CONFIG_FILES):
        raise ValueError(f"{field}: {p}: not a Hugging Face model directory (no config.json)")
    if not weights or any((p / name).is_file() for name in SAFETENSORS_FILES):
        return p
    pickled = [name for name in PICKLE_FILES if (p / name).is_file()]
    if pickled:
        raise ValueError(
            f"{field}: {p}: the weights are {pickled[0]} (pickle), but safetensors are required; "
            + _conversion_hint(p)
        )
    raise ValueError(
        f"{field}: {p}: no model weights (expected {SAFETENSORS_FILES[0]} or "
        f"{SAFETENSORS_FILES[1]})"
    )


def uses_attention_softcapping(directory: str | os.PathLike[str]) -> bool:
    """Whether the model's ``config.json`` (or its ``text_config``) sets
    ``attn_logit_softcapping``, which only the eager attention applies."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    return bool(config.get("attn_logit_softcapping") or text.get("attn_logit_softcapping"))


def load_pretrained(auto_class: Any, path: str | os.PathLike[str], field: str, **kwargs: Any):
    """``auto_class.from_pretrained(path, use_safetensors=True, **kwargs)`` after
    :func:`check_model_dir` (so a bad path is one line naming ``field``, not a traceback).

    ``auto_class``: any transformers class with ``from_pretrained``, e.g.
    ``AutoModelForCausalLM`` or ``AutoModelForSequenceClassification``. ``kwargs`` whose value
    is None are left out (transformers' default), except that a model with attention logit
    soft-capping (Gemma 2) loads with the eager attention unless told otherwise: the others skip
    the capping. Under DeepSpeed ZeRO-3 the model loads
    partitioned, each process reading only its own slices
    (:func:`align.core.sharded_loading.load_partitioned`).
    """
    directory = check_model_dir(path, field)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if "attn_implementation" not in kwargs and uses_attention_softcapping(directory):
        # sdpa and flash attention skip the logit soft-capping these models (Gemma 2) are
        # trained with; vLLM applies it, so the default would drift from the engine's logprobs
        kwargs["attn_implementation"] = "eager"
    # lazy: torch and transformers stay off the path checks' imports (CLI --help)
    from align.core import sharded_loading

    if sharded_loading.zero3_enabled():
        return sharded_loading.load_partitioned(auto_class, directory, **kwargs)
    return auto_class.from_pretrained(directory, use_safetensors=True, **kwargs)


#: Load dtypes a config may name.
DTYPES = ("float32", "bfloat16", "float16")
#: The keys of TRL's ``model_init_kwargs`` that apply when a recipe loads its model itself.
INIT_KWARGS = ("dtype", "attn_implementation")


def load_options(dtype: str | None = None, attn_implementation: str | None = None) -> dict:
    """``from_pretrained`` keyword arguments for a config's ``dtype`` (``float32``, ``bfloat16``,
    ``float16``) and ``attn_implementation`` (None: left to transformers)."""
    options: dict[str, Any] = {}
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
        # lazy: torch stays off the path checks' imports (CLI --help)
        import torch

        options["dtype"] = getattr(torch, dtype)
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    return options


def model_init_options(model_init_kwargs: Mapping[str, Any] | None) -> dict:
    """:func:`load_options` from TRL's ``model_init_kwargs`` (SFT and UFRM recipes, which load
    their model themselves): ``dtype`` and ``attn_implementation`` apply; any other key is a
    ValueError naming it rather than a setting silently ignored."""
    kwargs = dict(model_init_kwargs or {})
    unknown = sorted(set(kwargs) - set(INIT_KWARGS))
    if unknown:
        raise ValueError(
            f"model_init_kwargs: only {' and '.join(INIT_KWARGS)} apply (the recipe loads the "
            f"model itself), got {unknown}"
        )
    return load_options(kwargs.get("dtype"), kwargs.get("attn_implementation"))
