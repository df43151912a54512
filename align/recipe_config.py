"""YAML + ``--field value`` loading shared by the SFT and pretraining recipe configs."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

import yaml


def values_from_sources(
    cls: type, config: str | Path | None, overrides: list[str], default_output_dir: str
) -> dict:
    """Field values from a YAML file (optional) then ``--field value`` overrides; unknown fields
    are errors naming the class."""
    from align.ppo_config import _coerce_numbers, _parse_overrides

    values = {}
    if config is not None:
        if not Path(config).is_file():
            raise FileNotFoundError(f"{config}: no such config file")
        loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config}: expected a mapping of {cls.__name__} fields")
        values.update(loaded)
    values.update(_parse_overrides(list(overrides)))
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}")
    values.setdefault("output_dir", default_output_dir)
    return _coerce_numbers(cls, values)


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
