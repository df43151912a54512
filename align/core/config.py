"""Dataclass configs from YAML plus ``--field value`` overrides: one loader, one printer and one
field listing (for ``--help`` and ``docs/config.md``) for every entry point.

Every command's settings are one ``@dataclass``; related settings are nested dataclasses; every
field carries its help text (:func:`help_field`) and, for numbers, its allowed range. The
dataclass is the only place defaults live.

:func:`load_config` builds a config from a YAML file and overrides:

- Nested fields are reached with dots: ``--rollout.vllm.dtype bfloat16`` on the command line;
  ``rollout: {vllm: {dtype: bfloat16}}`` or the dotted key ``rollout.vllm.dtype: bfloat16`` in YAML.
  Field names use underscores; dashes are read as underscores (``--max-new-tokens``).
- Values from the command line are read by the field's type: a ``str`` field takes the text as it
  is; every other field reads it as YAML (``--beta 0.1``, ``--category_weights '{金融计算: 2}'``,
  ``--kl_target null``). A list field also takes comma-separated items (``--buckets 64,128``), and
  a list flag given several times collects all of them. A ``bool`` flag alone means ``true``.
- A nested mapping (or the whole file) may name a base file with ``config: FILE`` (a path, or the
  name of a shipped config such as ``tiny``); its keys are read first and the mapping's own keys
  override them.
- Old spellings listed in a class's ``config_renames`` (old name → new dotted path) still work and
  warn once (:class:`ConfigWarning`); names in ``config_removed`` are errors with a hint.
- Every mistake is a :class:`ConfigError` (a ``ValueError``): one line naming the field by its
  dotted path, the value and what was expected, and the file for YAML mistakes (with the line
  for syntax errors and duplicate keys). Unknown fields suggest the closest name.

Layer 0: imports no project code.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import re
import types
import typing
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

#: Where ``--config NAME`` finds shipped configs: ``align/configs/<config_name>_<NAME>.yaml``.
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: The key of a nested mapping that names a base file.
INCLUDE_KEY = "config"
_NULLS = ("null", "Null", "NULL", "~")
_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A configuration mistake; ``str(error)`` is one line. ``path``: the dotted field, if any."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(" ".join(message.split()))
        self.path = path


def missing_inputs_error(given: tuple[str, Any], missing: Sequence[tuple[str, str]]) -> ConfigError:
    """The error of a run that names a model path but leaves other inputs empty: the tiny world
    fills in only when no model path is given. ``given``: ``(field, path)`` of the model path
    that was given; ``missing``: ``(field, what it expects)`` of each empty input, the first
    named with what it expects, the others listed after it (one line)."""
    (field, expected), rest = missing[0], missing[1:]
    also = f" (also missing: {', '.join(name for name, _ in rest)})" if rest else ""
    return ConfigError(
        f"{field}: required once a model path is given ({given[0]}: {given[1]}): expected "
        f"{expected}; the tiny world fills in only when no model path is given{also}",
        field,
    )


class ConfigWarning(FutureWarning):
    """An old spelling that still works (warned once per spelling)."""


# ------------------------------------------------------------------ declaring fields


def help_field(
    text: str,
    default: Any = None,
    *,
    factory: Callable[[], object] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    base: str | None = None,
):
    """A dataclass field with its ``--help`` text (``factory`` for mutable defaults) and, for
    numbers, its allowed range (``ge``/``gt``/``le``/``lt``), checked by :func:`check_ranges`.
    ``base``: for a nested config, the config file a mapping given for it starts from when it
    names none itself (``config:``); the ``factory`` should build that same config."""
    metadata: dict[str, Any] = {"help": text}
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if bounds:
        metadata["range"] = bounds
    if base is not None:
        metadata["config_base"] = base
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def describe_range(bounds: Mapping[str, float]) -> str:
    """``{"gt": 0, "le": 1}`` → ``in (0, 1]``; ``{"ge": 0}`` → ``>= 0``."""
    brackets = {"ge": "[", "gt": "(", "le": "]", "lt": ")"}
    low = next(((brackets[k], bounds[k]) for k in ("ge", "gt") if k in bounds), None)
    high = next(((brackets[k], bounds[k]) for k in ("le", "lt") if k in bounds), None)
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]:g}"
    return f"{'<=' if high[0] == ']' else '<'} {high[1]:g}"


def in_range(value: float, bounds: Mapping[str, float]) -> bool:
    """Whether ``value`` lies within ``bounds`` (keys ``ge``, ``gt``, ``le``, ``lt``)."""
    checks = {
        "ge": value >= bounds.get("ge", value),
        "gt": "gt" not in bounds or value > bounds["gt"],
        "le": value <= bounds.get("le", value),
        "lt": "lt" not in bounds or value < bounds["lt"],
    }
    return all(checks.values())


def check_range(name: str, value: Any, **bounds: float) -> None:
    """``ValueError`` naming ``name`` and the range when the number ``value`` is outside it
    (``None`` and non-numbers pass: types are the loader's business)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    if value != value or not in_range(value, bounds):  # NaN is outside every range
        raise ValueError(f"{name}: expected {describe_range(bounds)}, got {value}")


#: Ranges of the ``transformers.TrainingArguments`` fields users set most, for the configs built
#: on TRL's (``config_ranges = TRAINER_RANGES``): TRL does not check them.
TRAINER_RANGES: dict[str, dict[str, float]] = {
    "learning_rate": {"ge": 0},
    "num_train_epochs": {"gt": 0},
    "max_steps": {"ge": -1},
    "per_device_train_batch_size": {"ge": 1},
    "per_device_eval_batch_size": {"ge": 1},
    "gradient_accumulation_steps": {"ge": 1},
    "weight_decay": {"ge": 0},
    "max_grad_norm": {"ge": 0},
    "warmup_steps": {"ge": 0},
    "warmup_ratio": {"ge": 0, "le": 1},
    "logging_steps": {"gt": 0},
    "save_steps": {"gt": 0},
    "eval_steps": {"gt": 0},
    "save_total_limit": {"ge": 1},
    "max_length": {"ge": 1},
    "adam_beta1": {"ge": 0, "lt": 1},
    "adam_beta2": {"ge": 0, "lt": 1},
    "adam_epsilon": {"gt": 0},
    "seed": {"ge": 0},
}


def field_range(cls: type, f: dataclasses.Field) -> Mapping[str, float] | None:
    """The range of a field: declared with :func:`help_field`, or in the class's
    ``config_ranges`` (for fields it inherits, e.g. from TRL)."""
    return f.metadata.get("range") or getattr(cls, "config_ranges", {}).get(f.name)


def check_ranges(config: Any) -> None:
    """Check every field declared with a range (:func:`help_field`, ``config_ranges``); call it
    in ``__post_init__``."""
    for f in dataclasses.fields(config):
        bounds = field_range(type(config), f)
        if bounds:
            check_range(f.name, getattr(config, f.name), **bounds)


def check_choice(name: str, value: Any, choices: Iterable) -> None:
    """``ValueError`` naming ``name`` when ``value`` is not one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        listed = ", ".join(str(c) for c in choices)
        raise ValueError(f"{name}: expected one of {listed}, got {value!r}")


def check_literals(config: Any) -> None:
    """Check every ``Literal[...]`` field of ``config`` (for configs built in code, where the
    loader's type checks do not run)."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        inner, optional = _strip_optional(hints[f.name])
        value = getattr(config, f.name)
        if typing.get_origin(inner) is Literal and not (optional and value is None):
            check_choice(f.name, value, typing.get_args(inner))


# ------------------------------------------------------------------ types


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``; ``(tp, False)`` otherwise."""
    if not _is_union(tp):
        return tp, False
    args = typing.get_args(tp)
    rest = tuple(a for a in args if a is not type(None))
    if len(rest) == len(args):
        return tp, False
    return (rest[0] if len(rest) == 1 else typing.Union[rest]), True  # noqa: UP007


def is_section(tp: Any) -> bool:
    """A nested config: a dataclass whose every field has help text."""
    if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
        return False
    return all("help" in f.metadata for f in dataclasses.fields(tp) if f.init)


def section_of(tp: Any) -> type | None:
    """The nested config class of a field type (``X`` or ``X | None``), else None."""
    inner, _ = _strip_optional(tp)
    return inner if is_section(inner) else None


def _list_item(tp: Any) -> Any | None:
    """The item type of ``list[X]`` (``X | None`` around it allowed), else None."""
    inner, _ = _strip_optional(tp)
    if typing.get_origin(inner) in (list, Sequence) and typing.get_args(inner):
        return typing.get_args(inner)[0]
    return None


def type_name(tp: Any) -> str:
    """A short readable name: ``int``, ``float | None``, ``list[str]``, ``{k1, k2, k3}``."""
    if tp is type(None):
        return "None"
    if _is_union(tp):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "{" + ", ".join(str(a) for a in typing.get_args(tp)) + "}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "{" + ", ".join(str(m.value) for m in tp) + "}"
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else type_name(a) for a in typing.get_args(tp))
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{args}]" if args else name
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


# ------------------------------------------------------------------ converting values


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _expected(path: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"{path}: expected {what}, got {_show(value)}", path)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


_NO = object()


def _float_value(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return _NO
    return _NO


_SCALARS: dict[type, tuple[str, Callable[[Any], Any]]] = {
    bool: ("true or false", lambda v: v if isinstance(v, bool) else _NO),
    int: ("an integer", lambda v: v if isinstance(v, int) and not isinstance(v, bool) else _NO),
    float: ("a number", _float_value),
    str: ("a string", lambda v: v if isinstance(v, str) else _NO),
    Path: ("a path", lambda v: Path(v) if isinstance(v, str | Path) else _NO),
}


def _convert_scalar(value: Any, tp: type, path: str) -> Any:
    what, check = _SCALARS.get(tp, (type_name(tp), lambda v: v if isinstance(v, tp) else _NO))
    out = check(value)
    if out is _NO:
        raise _expected(path, what, value)
    return out


def _convert_union(value: Any, tp: Any, path: str) -> Any:
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise _expected(path, type_name(tp), value)
    if optional or not _is_union(inner):
        return convert(value, inner, path)
    for member in typing.get_args(inner):
        if section_of(member) and isinstance(value, Mapping):
            return convert(value, member, path)  # its own errors name the nested field
        try:
            return convert(value, member, path)
        except ConfigError:
            continue
    raise _expected(path, type_name(tp), value)


def _convert_container(value: Any, tp: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if origin in (list, Sequence, tuple):
        if not isinstance(value, list | tuple):
            raise _expected(path, "a list", value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _expected(path, f"a list of {len(args)} items", value)
            return tuple(convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if not isinstance(value, Mapping):
        raise _expected(path, "a mapping", value)
    key_tp, value_tp = args if len(args) == 2 else (Any, Any)
    return {
        convert(k, key_tp, path): convert(v, value_tp, _join(path, str(k)))
        for k, v in value.items()
    }


def _convert_choice(value: Any, tp: Any, path: str) -> Any:
    """``None`` for ``NoneType``; one of the choices of a ``Literal`` or an ``Enum``."""
    if tp is type(None):
        if value is None:
            return None
        raise _expected(path, "null", value)
    if typing.get_origin(tp) is Literal:
        for choice in typing.get_args(tp):
            if value == choice and type(value) is type(choice):
                return choice
        raise _expected(path, "one of " + ", ".join(map(str, typing.get_args(tp))), value)
    try:
        return value if isinstance(value, tp) else tp(value)
    except ValueError:
        raise _expected(path, "one of " + ", ".join(str(m.value) for m in tp), value) from None


def _convert_config(value: Any, tp: type, path: str) -> Any:
    if isinstance(value, tp):
        return value
    if isinstance(value, Mapping):
        return build(tp, value, path)
    raise _expected(path, f"a mapping of {tp.__name__} fields", value)


def convert(value: Any, tp: Any, path: str) -> Any:
    """``value`` (as read from YAML) checked and converted to the field type ``tp``; nested
    configs are built with :func:`build`. ``ConfigError`` naming ``path`` when it does not fit."""
    if tp is Any or tp is object:
        return value
    if _is_union(tp):
        return _convert_union(value, tp, path)
    origin = typing.get_origin(tp)
    is_class = isinstance(tp, type)
    if tp is type(None) or origin is Literal or (is_class and issubclass(tp, enum.Enum)):
        return _convert_choice(value, tp, path)
    if is_class and dataclasses.is_dataclass(tp):
        return _convert_config(value, tp, path)
    if origin in (list, Sequence, tuple, dict, Mapping) or tp in (list, tuple, dict):
        return _convert_container(value, tp, path)
    return _convert_scalar(value, tp, path) if is_class else value


# ------------------------------------------------------------------ field names


def _renames(cls: type) -> dict[str, str]:
    return getattr(cls, "config_renames", {})


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The settable fields of ``cls`` (old spellings in ``config_renames`` and the fields in
    ``config_hidden`` left out)."""
    hidden = {*_renames(cls), *getattr(cls, "config_hidden", ())}
    return [f for f in dataclasses.fields(cls) if f.init and f.name not in hidden]


def _leaf_paths(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in config_fields(cls):
        sub = section_of(_hints(cls)[f.name])
        out += _leaf_paths(sub, _join(prefix, f.name)) if sub else [_join(prefix, f.name)]
    return out


def suggest(name: str, cls: type) -> str:
    """``"; did you mean 'x'?"`` for the closest field of ``cls`` (nested ones by their last
    part too), or ``""``."""
    names = [f.name for f in config_fields(cls)]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if not close:
        leaves = _leaf_paths(cls)
        close = [p for p in leaves if p.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]][:1]
        close = close or difflib.get_close_matches(name, leaves, n=1, cutoff=0.75)
    return f"; did you mean '{close[0]}'?" if close else ""


_warned: set[tuple[str, str]] = set()


def _renamed(cls: type, name: str, path: str) -> str:
    """``name`` with ``cls``'s old spellings mapped to the new dotted name (warned once)."""
    new = _renames(cls).get(name)
    if new is None:
        return name
    if (cls.__qualname__, name) not in _warned:
        _warned.add((cls.__qualname__, name))
        warnings.warn(
            f"{_join(path, name)}: old spelling, read as {_join(path, new)}",
            ConfigWarning,
            stacklevel=4,
        )
    return new


def _unknown(cls: type, name: str, path: str) -> ConfigError:
    full = _join(path, name)
    removed = getattr(cls, "config_removed", {}).get(name)
    if removed:
        return ConfigError(f"{full}: {removed}", full)
    return ConfigError(f"unknown field '{full}' of {cls.__name__}{suggest(name, cls)}", full)


# ------------------------------------------------------------------ YAML


class _Section(dict):
    """The values of one (nested) config, keys already field names; merged key by key.
    ``included``: a base file was read into it (``config:``)."""

    included = False


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the SafeLoader reports unhashable keys itself
            if key in seen:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (first given "
                    f"on line {seen[key] + 1})"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str) -> Any:
    """YAML ``text``; errors name ``source`` (and the line for syntax errors, duplicate keys)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except ConfigError as err:
        raise ConfigError(f"{source}:{str(err).removeprefix('line ')}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: YAML syntax error: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: YAML error: {err}") from None


def resolve_config_file(cls: type, config: str | Path, relative_to: Path | None = None) -> Path:
    """A YAML path (as given, or relative to ``relative_to``), or the name of a config shipped
    for ``cls`` (``align/configs/<cls.config_name>_<name>.yaml``)."""
    candidates = [Path(config)]
    if relative_to is not None and not Path(config).is_absolute():
        candidates.append(relative_to / config)
    prefix = getattr(cls, "config_name", None)
    if prefix:
        candidates.append(SHIPPED_CONFIGS / f"{prefix}_{config}.yaml")
    for path in candidates:
        if path.is_file():
            return path
    shipped = sorted(p.stem.removeprefix(f"{prefix}_") for p in SHIPPED_CONFIGS.glob(f"{prefix}_*"))
    hint = f" (shipped {prefix} configs: {', '.join(shipped)})" if prefix and shipped else ""
    raise FileNotFoundError(f"{config}: no such config file{hint}")


def read_config_file(path: Path) -> dict:
    """The mapping in a YAML config file (an empty file is an empty mapping)."""
    loaded = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of fields, got {type(loaded).__name__}")
    return loaded


# ------------------------------------------------------------------ normalising mappings


def _merge(into: dict, new: Mapping, path: str, *, override: bool) -> None:
    """Merge ``new`` into ``into``: sections key by key; other values replace (``override``) or
    are an error when given twice."""
    for key, value in new.items():
        old = into.get(key)
        if isinstance(old, _Section) and isinstance(value, _Section):
            _merge(old, value, _join(path, key), override=override)
            old.included = old.included or value.included
        elif key in into and not override:
            full = _join(path, key)
            raise ConfigError(f"{full}: given twice (in two spellings)", full)
        else:
            into[key] = value


def _split_key(cls: type, key: Any, path: str) -> tuple[str, str]:
    """``(field, rest)`` of a (possibly dotted, possibly old) key of ``cls``."""
    if not isinstance(key, str):
        raise _expected(path or cls.__name__, "field names as keys", key)
    head, _, rest = key.replace("-", "_").partition(".")
    head, _, renamed_rest = _renamed(cls, head, path).partition(".")
    rest = ".".join(p for p in (renamed_rest, rest) if p)
    if head not in {f.name for f in config_fields(cls)}:
        raise _unknown(cls, head, path)
    return head, rest


def _field_section(cls: type, name: str, path: str) -> type:
    sub = section_of(_hints(cls)[name])
    if sub is None:
        full = _join(path, name)
        raise ConfigError(f"{full}: not a nested config (no '.' after it)", full)
    return sub


def normalize(cls: type, raw: Mapping, path: str = "", base_dir: Path | None = None) -> _Section:
    """``raw`` (YAML) with dotted keys expanded, old spellings renamed, ``config:`` includes read
    and nested configs' mappings normalised too; unknown keys are errors."""
    if not isinstance(raw, Mapping):
        raise _expected(path or cls.__name__, f"a mapping of {cls.__name__} fields", raw)
    out = _Section()
    names = {f.name for f in config_fields(cls)}
    if INCLUDE_KEY in raw and INCLUDE_KEY not in names:
        file = resolve_config_file(cls, raw[INCLUDE_KEY], base_dir)
        try:
            out = normalize(cls, read_config_file(file), path, file.parent)
        except ConfigError as err:
            raise _from_file(err, file) from None
        out.included = True
    mine = _Section()
    for key, value in raw.items():
        if key == INCLUDE_KEY and INCLUDE_KEY not in names:
            continue
        name, rest = _split_key(cls, key, path)
        if rest:
            value = {rest: value}
            _field_section(cls, name, path)
        sub = section_of(_hints(cls)[name])
        if sub is not None and isinstance(value, Mapping):
            value = normalize(sub, value, _join(path, name), base_dir)
        _merge(mine, {name: value}, path, override=False)
    _merge(out, mine, path, override=True)
    return out


def _from_file(err: ConfigError, file: Path) -> ConfigError:
    text = str(err)
    return err if text.startswith(str(file)) else ConfigError(f"{file}: {text}", err.path)


# ------------------------------------------------------------------ command-line overrides


def _is_text(tp: Any) -> bool:
    """Types whose command-line text is taken as it is (not read as YAML)."""
    if _is_union(tp):
        return all(_is_text(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return all(isinstance(m.value, str) for m in tp)
    return tp in (str, Path)


def _yaml_text(text: str, flag: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{flag}: not valid YAML ({problem}): {text!r}") from None


def _list_text(text: str, item: Any, flag: str) -> list:
    """One command-line value of a list field → its items."""
    stripped = text.strip()
    if stripped.startswith("["):
        value = _yaml_text(text, flag)
        return value if isinstance(value, list) else [value]
    if isinstance(item, type) and dataclasses.is_dataclass(item):
        if stripped.startswith("{"):
            return [_yaml_text(text, flag)]
        from_text = getattr(item, "from_text", None)
        if from_text is None:
            raise ConfigError(f"{flag}: expected a YAML list or mapping of {item.__name__} fields")
        return list(from_text(stripped))
    return [text_value(part, item, flag) for part in text.split(",") if part.strip()]


def text_value(text: str, tp: Any, flag: str) -> Any:
    """A command-line value for a field of type ``tp``, as YAML would have given it."""
    inner, optional = _strip_optional(tp)
    if optional and text.strip() in _NULLS:
        return None
    if _is_text(inner):
        return text
    item = _list_item(inner)
    if item is not None:
        return _list_text(text, item, flag)
    if typing.get_origin(inner) is tuple and not text.strip().startswith("["):
        args = [a for a in typing.get_args(inner) if a is not Ellipsis] or [Any]
        parts = [p for p in text.split(",") if p.strip()]
        return [text_value(p, args[min(i, len(args) - 1)], flag) for i, p in enumerate(parts)]
    return _yaml_text(text, flag)


def resolve_flag(cls: type, name: str) -> tuple[list[str], Any]:
    """The dotted field path (old spellings renamed) and field type of ``--name``."""
    parts, path, owner, tp = [], "", cls, None
    remaining = name.replace("-", "_")
    while remaining:
        if owner is None:
            raise ConfigError(f"--{name}: {path} is not a nested config", path)
        head, rest = _split_key(owner, remaining, path)
        parts.append(head)
        path = _join(path, head)
        tp = _hints(owner)[head]
        remaining, owner = rest, section_of(tp)
        if remaining == INCLUDE_KEY and owner is not None:
            return [*parts, INCLUDE_KEY], str
    return parts, tp


def parse_overrides(cls: type, args: Sequence[str]) -> list[tuple[list[str], Any, str]]:
    """``["--beta", "0.1", "--rollout.engine=vllm", "--use_cache"]`` → ``(field path, value,
    flag)`` triples; a list flag given several times collects its items."""
    args, out, lists = list(args), [], {}
    while args:
        flag = args.pop(0)
        if not flag.startswith("--"):
            raise ConfigError(f"expected --field value, got {flag!r}")
        name, eq, text = flag[2:].partition("=")
        parts, tp = resolve_flag(cls, name)
        if not eq:
            if args and not args[0].startswith("--"):
                text = args.pop(0)
            elif _strip_optional(tp)[0] is bool:
                text = "true"
            else:
                raise ConfigError(f"--{name}: missing value", ".".join(parts))
        value = text_value(text, tp, f"--{name}")
        key = ".".join(parts)
        if _list_item(tp) is not None and key in lists and value is not None:
            lists[key].extend(value)
            continue
        if _list_item(tp) is not None and value is not None:
            lists[key] = value
        out.append((parts, value, f"--{name}"))
    return out


def _override_section(cls: type, parts: list[str], value: Any) -> _Section:
    """``{parts[0]: {parts[1]: ... value}}`` as sections, ``value`` normalised if a config."""
    owner, path = cls, ""
    owners = []
    for name in parts[:-1]:
        owners.append(owner)
        path = _join(path, name)
        owner = section_of(_hints(owner)[name])
    last = parts[-1]
    if last == INCLUDE_KEY and owner is not None and INCLUDE_KEY not in _hints(owner):
        node = normalize(owner, {INCLUDE_KEY: value}, path)
    else:
        sub = section_of(_hints(owner)[last])
        if sub is not None and isinstance(value, Mapping):
            value = normalize(sub, value, _join(path, last))
        node = _Section({last: value})
    for name in reversed(parts[:-1]):
        node = _Section({name: node})
    return node


# ------------------------------------------------------------------ building


def build(cls: type, raw: Mapping, path: str = "") -> Any:
    """An instance of ``cls`` from a mapping (nested mappings → nested configs); type errors,
    unknown and missing fields and ``__post_init__`` errors as one-line ``ConfigError``."""
    values = raw if isinstance(raw, _Section) else normalize(cls, raw, path)
    hints = _hints(cls)
    kwargs = {}
    for f in config_fields(cls):
        if f.name in values:
            value = _with_base(cls, f, values[f.name], _join(path, f.name))
            kwargs[f.name] = convert(value, hints[f.name], _join(path, f.name))
    for f in config_fields(cls):
        required = f.default is _MISSING and f.default_factory is _MISSING
        if required and f.name not in kwargs:
            full = _join(path, f.name)
            raise ConfigError(f"{full}: required", full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:
        raise _in_context(err, path) from None


def _with_base(cls: type, f: dataclasses.Field, value: Any, path: str) -> Any:
    """A mapping for a nested config declared with a ``base`` file, on top of that file (unless
    it names its own ``config:``)."""
    base = f.metadata.get("config_base")
    if base is None or not isinstance(value, Mapping):
        return value
    sub = section_of(_hints(cls)[f.name])
    section = value if isinstance(value, _Section) else normalize(sub, value, path)
    if section.included:
        return section
    out = normalize(sub, {INCLUDE_KEY: base}, path)
    _merge(out, section, path, override=True)
    return out


def _in_context(err: ValueError, path: str) -> ConfigError:
    """A nested config's ``ValueError`` with the dotted path of that config in front."""
    message = " ".join(str(err).split())
    named = re.match(r"^([A-Za-z_][\w.\[\]]*):", message)
    field = _join(path, named.group(1)) if named else path
    if not path:
        return ConfigError(message, field)
    if named:
        return ConfigError(f"{path}.{message}", field)
    return ConfigError(f"{path}: {message}", field)


def load_config(cls: type, config: str | Path | None = None, overrides: Sequence[str] = ()) -> Any:
    """``cls`` from a YAML file (a path or a shipped name; optional) then ``--field value``
    overrides (see the module docstring). Errors: one-line :class:`ConfigError`."""
    values = _Section()
    file = None
    if config is not None:
        file = resolve_config_file(cls, config)
        try:
            values = normalize(cls, read_config_file(file), "", file.parent)
        except ConfigError as err:
            raise _from_file(err, file) from None
    in_file = set(_paths(values))
    given = set()
    for parts, value, _flag in parse_overrides(cls, overrides):
        _merge(values, _override_section(cls, parts, value), "", override=True)
        given.add(".".join(parts))
    try:
        return build(cls, values)
    except ConfigError as err:
        if file is None or _touches(err.path, given) or not _touches(err.path, in_file):
            raise
        raise _from_file(err, file) from None


def _paths(section: Mapping, prefix: str = "") -> list[str]:
    """The dotted paths of every value in a normalised mapping."""
    out = []
    for key, value in section.items():
        path = _join(prefix, key)
        out += _paths(value, path) if isinstance(value, _Section) else [path]
    return out


def _touches(path: str, paths: set[str]) -> bool:
    """Whether the field ``path`` is one of ``paths``, inside one, or holds one."""
    if not path:
        return False
    inside = (path + ".", path + "[")
    return any(
        p == path or p.startswith(inside) or path.startswith((p + ".", p + "[")) for p in paths
    )


# ------------------------------------------------------------------ printing


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k if isinstance(k, str | int | float | bool) else str(k): _plain(v)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (``_MISSING`` when it is required)."""
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def config_to_dict(config: Any, *, skip_defaults_of: type | None = None) -> dict:
    """Plain values of every settable field (nested configs as mappings, enums as their values).
    ``skip_defaults_of``: leave out that base class's fields that still have their defaults (and
    a class with ``config_omit_defaults = True`` leaves out all of its own such fields)."""
    base = {f.name for f in dataclasses.fields(skip_defaults_of)} if skip_defaults_of else set()
    compact = getattr(type(config), "config_omit_defaults", False)
    out = {}
    fields = config_fields(type(config))
    for f in [f for f in fields if f.name not in base] + [f for f in fields if f.name in base]:
        value = getattr(config, f.name)
        if (compact or f.name in base) and _plain(value) == _plain(default_of(f)):
            continue
        out[f.name] = _plain(value)
    return out


def config_to_yaml(config: Any) -> str:
    """The resolved config as YAML that :func:`load_config` reads back to an equal config. A
    class with ``config_trl_base`` (a TRL config it extends) prints that base's fields only where
    they differ from their defaults."""
    base = getattr(type(config), "config_trl_base", None)
    data = config_to_dict(config, skip_defaults_of=base)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


# ------------------------------------------------------------------ listing fields


@dataclasses.dataclass
class FieldDoc:
    """One row of ``--help`` / ``docs/config.md``."""

    name: str  # dotted path (``rewards[].type`` for entries of a list of configs)
    type: str
    default: str
    help: str
    section: str  # dotted path of the nested config it belongs to ("" at the top)
    option: bool  # reachable as ``--name``
    bool_flag: bool = False  # ``--name`` alone means true
    is_list: bool = False  # the flag may be repeated


def show_default(value: Any) -> str:
    """A default as it is written in YAML: ``0.05``, ``null``, ``[a, b]``, ``{}``, ``''``."""
    if value is _MISSING:
        return "required"
    text = yaml.safe_dump(
        _plain(value), allow_unicode=True, default_flow_style=True, width=10**6, sort_keys=False
    )
    return text.strip().removesuffix("...").strip()


def _help_text(cls: type, f: dataclasses.Field) -> str:
    text = " ".join(str(f.metadata.get("help", "")).split())
    bounds = field_range(cls, f)
    return f"{text} Range: {describe_range(bounds)}." if bounds else text


def field_docs(cls: type, prefix: str = "", defaults: Any = None, option: bool = True) -> list:
    """Every field of ``cls`` as :class:`FieldDoc` rows, nested configs after their parent's
    rows (``prefix.name``); ``defaults``: an instance whose values are the defaults to show."""
    rows, nested = [], []
    hints = _hints(cls)
    for f in config_fields(cls):
        tp, name = hints[f.name], _join(prefix, f.name)
        default = getattr(defaults, f.name) if defaults is not None else default_of(f)
        sub, item = section_of(tp), _list_item(tp)
        if sub is None or _strip_optional(tp)[1]:
            rows.append(FieldDoc(name, type_name(tp), show_default(default), _help_text(cls, f),
                                 prefix, option, _strip_optional(tp)[0] is bool,
                                 item is not None))  # fmt: skip
        if sub is not None:
            inner = default if isinstance(default, sub) else None
            nested += field_docs(sub, name, inner, option)
        elif item is not None and is_section(item):
            nested += field_docs(item, f"{name}[]", None, option=False)
    return rows + nested


def section_help(cls: type, section: str) -> str:
    """The docstring summary of the nested config at dotted ``section`` ("" = ``cls``)."""
    owner = cls
    for part in [p for p in section.replace("[]", "").split(".") if p]:
        tp = _hints(owner)[part]
        owner = section_of(tp) or _list_item(tp)
    doc = (owner.__doc__ or "").strip().split("\n\n")[0]
    return f"{owner.__name__}: {' '.join(doc.split())}"
