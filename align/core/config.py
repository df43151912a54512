"""Dataclass configs from a YAML file plus ``--field value`` overrides, shared by every entry point
(PPO, PEI, UFRM, the SFT and pretraining recipes). Values are read as YAML, so ``--beta 0.1`` is a
float and ``--category_weights '{金融计算: 2}'`` a mapping; unknown fields are errors."""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable
from pathlib import Path

import yaml


def help_field(text: str, default=None, *, factory: Callable[[], object] | None = None):
    """A dataclass field with its ``--help`` text (``factory`` for mutable defaults)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": text})
    return dataclasses.field(default=default, metadata={"help": text})


def values_from_sources(
    cls: type,
    config: str | Path | None,
    overrides: list[str] = (),
    *,
    rename: Callable[[dict, set[str]], dict] = lambda values, known: values,
    hint: str = "",
) -> dict:
    """Field values of ``cls`` from a YAML file (optional) then overrides, numbers coerced.

    ``rename(values, known)`` may map other spellings onto field names before unknown names are
    reported; ``hint`` is appended to that error.
    """
    values = {}
    if config is not None:
        if not Path(config).is_file():
            raise FileNotFoundError(f"{config}: no such config file")
        loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config}: expected a mapping of {cls.__name__} fields")
        values.update(loaded)
    values.update(parse_overrides(list(overrides)))
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    values = rename(values, known)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}{hint}")
    return coerce_numbers(cls, values)


def coerce_numbers(cls: type, values: dict) -> dict:
    """YAML reads ``1e-4`` as a string and ``1`` as an int: make float fields floats."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for name, value in values.items():
        if float in typing.get_args(hints[name]) or hints[name] is float:
            if isinstance(value, bool):
                raise ValueError(f"{name}: expected a number, got {value!r}")
            if isinstance(value, int | str):
                try:
                    out[name] = float(value)
                except ValueError:
                    raise ValueError(f"{name}: expected a number, got {value!r}") from None
    return out


def parse_overrides(args: list[str]) -> dict:
    """``["--beta", "0.1", "--lr=1e-5"]`` → ``{"beta": 0.1, "lr": 1e-5}`` (values read as YAML)."""
    values = {}
    while args:
        flag = args.pop(0)
        if not flag.startswith("--"):
            raise ValueError(f"expected --field value, got {flag!r}")
        name, eq, value = flag[2:].partition("=")
        if not eq:
            if not args:
                raise ValueError(f"{flag}: missing value")
            value = args.pop(0)
        values[name.replace("-", "_")] = yaml.safe_load(value)
    return values


def changed_fields_yaml(config, base: type) -> str:
    """The fields of ``config`` that are not ``base``'s, and ``base``'s that differ from their
    defaults, as YAML."""
    base_names = {f.name for f in dataclasses.fields(base)}
    out = {}
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        value = getattr(config, f.name)
        if f.name in base_names and f.name != "output_dir" and value == f.default:
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        plain = isinstance(value, int | float | str | list | dict | type(None))
        out[f.name] = value if plain else str(value)
    return yaml.safe_dump(out, allow_unicode=True, sort_keys=False)
