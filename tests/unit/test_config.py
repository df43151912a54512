"""The config loader (align.core.config) on small dataclasses: types, YAML errors with their line,
duplicate keys, unknown fields and suggestions, old spellings, dotted and nested overrides,
base files, ranges, and the printed YAML reading back to an equal config."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from align.core.config import (
    ConfigError,
    ConfigWarning,
    check_range,
    check_ranges,
    config_to_yaml,
    describe_range,
    field_docs,
    help_field,
    load_config,
    text_value,
)


@dataclass
class Engine:
    """Engine options."""

    dtype: Literal["auto", "bfloat16"] = help_field("Weights dtype.", "auto")
    memory: float = help_field("Memory share.", 0.3, gt=0, le=1)

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class Entry:
    """A list entry."""

    kind: str = field(metadata={"help": "Its kind (required)."})
    weight: float = help_field("Its weight.", 1.0)

    @classmethod
    def from_text(cls, text: str) -> list[dict]:
        return [{"kind": text}]


@dataclass
class Toy:
    """A toy command."""

    config_renames: ClassVar[dict[str, str]] = {"engine_dtype": "engine.dtype", "steps_": "steps"}
    config_removed: ClassVar[dict[str, str]] = {"gone": "no longer a field; use engine.memory"}

    steps: int = help_field("Steps.", 5, ge=1)
    beta: float = help_field("Beta.", 0.05, ge=0)
    name: str = help_field("A name.", "x")
    path: str | None = help_field("A path.", None)
    weights: dict[str, float] | None = help_field("Weights.", None)
    items: list[int] = help_field("Items.", factory=lambda: [1, 2])
    pair: tuple[float, float] | None = help_field("A pair.", None)
    flag: bool = help_field("A flag.", False)
    engine: Engine = help_field("The engine.", factory=Engine)
    spare: Engine | None = help_field("An optional engine.", None)
    entries: list[Entry] = help_field("Entries.", factory=list)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.pair is not None and self.pair[0] > self.pair[1]:
            raise ValueError(f"pair: expected lo <= hi, got {self.pair}")


def _yaml(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ values by type


def test_command_line_values_are_read_by_the_field_type():
    cfg = load_config(
        Toy,
        None,
        ["--steps", "3", "--beta=1e-4", "--name", "no", "--path", "null", "--weights", "{a: 2}",
         "--items", "4,5", "--items", "[6]", "--pair", "-1,2.5", "--flag",
         "--engine.dtype", "bfloat16", "--spare.memory", "0.5", "--entries", "{kind: k}",
         "--entries", "short"],
    )  # fmt: skip
    assert (cfg.steps, cfg.beta, cfg.flag) == (3, 1e-4, True)
    assert cfg.name == "no"  # a str field keeps its text (YAML would read a bool)
    assert cfg.path is None and cfg.weights == {"a": 2.0} and isinstance(cfg.weights["a"], float)
    assert cfg.items == [4, 5, 6]  # commas, and a repeated list option collects
    assert cfg.pair == (-1.0, 2.5)
    assert cfg.engine == Engine("bfloat16", 0.3) and cfg.spare == Engine("auto", 0.5)
    assert cfg.entries == [Entry("k"), Entry("short")]  # from_text for the short form


def test_text_values_as_yaml_would_give_them():
    assert text_value("1.0", str, "--x") == "1.0"
    assert text_value("null", str | None, "--x") is None
    assert text_value("null", str, "--x") == "null"
    assert text_value("a.jsonl,b.jsonl", list[str], "--x") == ["a.jsonl", "b.jsonl"]
    assert text_value("{a: 1}", dict[str, int], "--x") == {"a": 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "abc"], "steps: expected an integer, got 'abc'"),
        (["--steps", "true"], "steps: expected an integer, got True"),
        (["--beta", "fast"], "beta: expected a number, got 'fast'"),
        (["--flag", "1"], "flag: expected true or false, got 1"),
        (["--engine.dtype", "fp8"], "engine.dtype: expected one of auto, bfloat16, got 'fp8'"),
        (["--weights", "{a: b}"], "weights.a: expected a number, got 'b'"),
        (["--weights", "[1]"], "weights: expected a mapping, got [1]"),
        (["--pair", "1,2,3"], "pair: expected a list of 2 items, got [1, 2, 3]"),
        (["--entries", "{weight: 2}"], "entries[0].kind: required"),
        (["--beta", "-1"], "beta: expected >= 0, got -1.0"),
        (["--engine.memory", "2"], "engine.memory: expected in (0, 1], got 2.0"),
        (["--pair", "2,1"], "pair: expected lo <= hi, got (2.0, 1.0)"),
        (["--name"], "--name: missing value"),
        (["--weights", "{a: [}"], "--weights: not valid YAML"),
    ],
)
def test_bad_values_are_one_line_naming_the_field(args, message):
    with pytest.raises(ConfigError) as caught:
        load_config(Toy, None, args)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


# ------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stesp", "1"], "unknown field 'stesp' of Toy; did you mean 'steps'?"),
        (["--dtype", "auto"], "unknown field 'dtype' of Toy; did you mean 'engine.dtype'?"),
        (["--engine.dtyp", "auto"], "unknown field 'engine.dtyp' of Engine; did you mean 'dtype'?"),
        (["--zzz", "1"], "unknown field 'zzz' of Toy"),
        (["--gone", "1"], "gone: no longer a field; use engine.memory"),
        (["--steps.x", "1"], "--steps.x: steps is not a nested config"),
    ],
)
def test_unknown_fields_suggest_the_closest_name(args, message):
    with pytest.raises(ConfigError) as caught:
        load_config(Toy, None, args)
    assert str(caught.value) == message


def test_dashes_read_as_underscores_and_old_spellings_warn_once(tmp_path, monkeypatch):
    monkeypatch.setattr("align.core.config._warned", set())  # warned once per process
    path = _yaml(tmp_path, "engine_dtype: bfloat16\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(Toy, path, ["--steps_", "7"])
        load_config(Toy, path)  # the same old spelling again: no second warning
    assert (cfg.engine.dtype, cfg.steps) == ("bfloat16", 7)
    messages = [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]
    assert messages == [
        "engine_dtype: old spelling, read as engine.dtype",
        "steps_: old spelling, read as steps",
    ]


@pytest.mark.filterwarnings("ignore::align.core.config.ConfigWarning")
def test_one_field_in_two_spellings_is_an_error(tmp_path):
    path = _yaml(tmp_path, "engine_dtype: auto\nengine: {dtype: bfloat16}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: engine.dtype: given twice \(in two spel"):
        load_config(Toy, path)


# ------------------------------------------------------------------ YAML files


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path):
    path = _yaml(tmp_path, "steps: 3\nbeta: [0.1\nname: x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(Toy, path)
    assert str(caught.value).startswith(f"{path}:3: YAML syntax error")


def test_duplicate_keys_are_errors_with_both_lines(tmp_path):
    path = _yaml(tmp_path, "steps: 3\nbeta: 0.1\nsteps: 4\n")
    with pytest.raises(ConfigError) as caught:
        load_config(Toy, path)
    assert str(caught.value) == f"{path}:3: duplicate key 'steps' (first given on line 1)"
    nested = _yaml(tmp_path, "engine:\n  dtype: auto\n  dtype: bfloat16\n", "n.yaml")
    with pytest.raises(ConfigError, match=r"n.yaml:3: duplicate key 'dtype'"):
        load_config(Toy, nested)


def test_file_mistakes_name_the_file_and_command_line_ones_do_not(tmp_path):
    path = _yaml(tmp_path, "steps: x\n")
    with pytest.raises(ConfigError, match=rf"^{path}: steps: expected an integer, got 'x'$"):
        load_config(Toy, path)
    path = _yaml(tmp_path, "beta: -2\n")
    with pytest.raises(ConfigError, match=rf"^{path}: beta: expected >= 0, got -2.0$"):
        load_config(Toy, path)
    with pytest.raises(ConfigError, match=r"^beta: expected >= 0, got -3.0$"):
        load_config(Toy, path, ["--beta", "-3"])
    with pytest.raises(ConfigError, match=r"expected a mapping of fields, got list"):
        load_config(Toy, _yaml(tmp_path, "- 1\n"))
    with pytest.raises(FileNotFoundError, match="nope.yaml: no such config file"):
        load_config(Toy, tmp_path / "nope.yaml")


def test_dotted_keys_nested_mappings_and_overrides_merge(tmp_path):
    path = _yaml(tmp_path, "engine.dtype: bfloat16\nweights: {a: 1, b: 2}\nspare: {memory: 0.2}\n")
    cfg = load_config(Toy, path, ["--engine.memory", "0.5", "--weights", "{c: 3}"])
    assert cfg.engine == Engine("bfloat16", 0.5)  # the file's dtype stays
    assert cfg.weights == {"c": 3.0}  # a mapping-valued field is replaced, not merged
    assert cfg.spare == Engine("auto", 0.2)


def test_a_nested_config_may_name_a_base_file(tmp_path):
    _yaml(tmp_path, "dtype: bfloat16\nmemory: 0.9\n", "engine.yaml")
    path = _yaml(tmp_path, "engine:\n  config: engine.yaml\n  memory: 0.4\n")
    cfg = load_config(Toy, path)  # the base is found beside the file naming it
    assert cfg.engine == Engine("bfloat16", 0.4)
    cfg = load_config(Toy, None, ["--engine.config", str(tmp_path / "engine.yaml")])
    assert cfg.engine == Engine("bfloat16", 0.9)


@dataclass
class WithBase:
    """A config whose nested part starts from a base file."""

    engine: Engine = help_field("The engine.", factory=Engine, base="BASE")


def test_a_declared_base_file_is_read_unless_the_mapping_names_its_own(tmp_path, monkeypatch):
    base = _yaml(tmp_path, "dtype: bfloat16\n", "base.yaml")
    other = _yaml(tmp_path, "memory: 0.7\n", "other.yaml")
    field_ = WithBase.__dataclass_fields__["engine"]
    monkeypatch.setattr(field_, "metadata", {**field_.metadata, "config_base": str(base)})
    assert load_config(WithBase, None, ["--engine.memory", "0.5"]).engine == Engine("bfloat16", 0.5)
    cfg = load_config(WithBase, None, ["--engine.config", str(other)])
    assert cfg.engine == Engine("auto", 0.7)  # its own base replaces the declared one


# ------------------------------------------------------------------ printing


def test_printed_yaml_reads_back_to_an_equal_config(tmp_path):
    cfg = load_config(
        Toy, None,
        ["--steps", "9", "--weights", "{保险: 2}", "--pair", "0.1,0.9", "--spare", "{}",
         "--entries", "[{kind: a, weight: 2}]", "--engine.dtype", "bfloat16"],
    )  # fmt: skip
    text = config_to_yaml(cfg)
    assert "保险" in text
    assert load_config(Toy, _yaml(tmp_path, text)) == cfg


def test_field_listing_has_every_field_with_type_default_and_range():
    rows = {r.name: r for r in field_docs(Toy)}
    assert set(rows) == {
        "steps", "beta", "name", "path", "weights", "items", "pair", "flag", "spare",
        "entries", "engine.dtype", "engine.memory", "spare.dtype", "spare.memory",
        "entries[].kind", "entries[].weight",
    }  # fmt: skip
    assert (rows["steps"].type, rows["steps"].default) == ("int", "5")
    assert rows["steps"].help == "Steps. Range: >= 1."
    assert rows["path"].default == "null" and rows["items"].default == "[1, 2]"
    assert rows["engine.dtype"].type == "{auto, bfloat16}"
    assert rows["entries[].kind"].default == "required" and not rows["entries[].kind"].option
    assert rows["flag"].bool_flag and rows["items"].is_list


def test_ranges_are_described_and_checked():
    assert describe_range({"gt": 0, "le": 1}) == "in (0, 1]"
    assert describe_range({"ge": 0}) == ">= 0" and describe_range({"lt": 0.5}) == "< 0.5"
    check_range("x", None, ge=0)  # unset: nothing to check
    with pytest.raises(ValueError, match=r"^x: expected in \[0, 1\), got 1$"):
        check_range("x", 1, ge=0, lt=1)
    with pytest.raises(ValueError, match=r"^x: expected >= 0, got nan$"):
        check_range("x", float("nan"), ge=0)
