"""Every generated command through ``align.cli.app.main`` (what the ``align`` script runs):
``--help`` lists every config field with its help and default, ``--show_config`` prints YAML
that reads back to an equal config, dotted overrides, suggestions for unknown fields, each user
error as one line with exit status 2, and the old spellings that still work."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import pytest
import yaml

from align.cli.app import GENERATED, main
from align.core.config import load_config

COMMANDS = {" ".join([*path, cmd.name]): cmd for path, cmd in GENERATED}
#: Required fields of each command (so --show_config has a config to print).
REQUIRED = {
    "rm eval": ["--model", "m", "--data", "d.jsonl"],
    "rm serve": ["--model", "m"],
    "chat": ["--model", "m"],
    "eval gsb": ["--candidate", "c"],
    "eval mcq": ["--data", "bench"],
    "data bucket": ["--docs", "d.jsonl", "--out", "o"],
    "data synth": ["--prompts", "p.jsonl", "--out", "o"],
    "sft": ["--bf16", "false"],  # no bf16 training on a CPU
}


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """``align ARGS``: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main(args)
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def squeeze(text: str) -> str:
    """Text without whitespace: help is wrapped (and split at hyphens) at any width."""
    return "".join(text.split())


def _help_of(f: dataclasses.Field) -> str:
    return " ".join(str(f.metadata["help"]).split()).replace("``", "")


def _default_of(owner, f: dataclasses.Field):
    if owner is not None:
        return getattr(owner, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _nested_class(tp):
    """The config class of a nested field (``X`` or ``X | None``), independently of the code."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    args = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
    sub = args[0] if len(args) == 1 else None
    if isinstance(sub, type) and dataclasses.is_dataclass(sub):
        return sub if all("help" in g.metadata for g in dataclasses.fields(sub)) else None
    return None


def expected_fields(cls, prefix: str = "", owner=None):
    """``(option name, help, default)`` of every settable field of ``cls``, nested ones dotted
    (old spellings and hidden fields left out: they are not options)."""
    hidden = {*getattr(cls, "config_renames", {}), *getattr(cls, "config_hidden", ())}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in hidden:
            continue
        name = f"{prefix}{f.name}"
        default = _default_of(owner, f)
        sub = _nested_class(hints[f.name])
        if sub is None or default is None:
            yield name, _help_of(f), default
        if sub is not None:
            yield from expected_fields(sub, f"{name}.", default if default is not None else None)


def _yaml_default(value) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if hasattr(value, "value"):  # an enum (TRL's strategies)
        value = value.value
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6)
    return text.strip().removesuffix("...").strip()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_field_with_its_help_and_default(command, capsys):
    code, out, err = run([*command.split(), "--help"], capsys)
    assert code == 0, err
    text = squeeze(out)
    assert squeeze("--config") in text and squeeze("--show_config") in text
    cls = COMMANDS[command].config_class
    fields = list(expected_fields(cls))
    assert len(fields) >= 5
    for name, help_text, default in fields:
        configs = isinstance(default, list) and default and dataclasses.is_dataclass(default[0])
        shown = "" if configs else _yaml_default(default)  # [{type: python, ...}]: round trip
        assert squeeze(f"--{name}") in text, f"{command}: --{name} missing from --help"
        assert squeeze(help_text) in text, f"{command}: the help of --{name} missing"
        assert squeeze(f"[default: {shown}") in text, f"{command}: the default of --{name}"


def test_help_lists_the_entries_of_a_list_of_configs(capsys):
    from rm.spec import RewardSpec

    _, out, _ = run(["ppo", "--help"], capsys)
    text = squeeze(out)
    for f in dataclasses.fields(RewardSpec):
        assert squeeze(f"rewards[].{f.name}") in text and squeeze(_help_of(f)) in text


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_show_config_reads_back_to_an_equal_config(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = REQUIRED.get(command, [])
    code, out, err = run([*command.split(), *args, "--show_config"], capsys)
    assert code == 0, err
    cls = COMMANDS[command].config_class
    printed = tmp_path / "printed.yaml"
    printed.write_text(out, encoding="utf-8")
    base = COMMANDS[command].default_config
    tiny = getattr(cls, "config_tiny_base", None)  # no model path given: the tiny config is read
    if base is None and tiny is not None:
        base = tiny
        assert f"note: no model path given: the tiny world, starting from the shipped config " \
               f"'{tiny}'" in err  # fmt: skip
    assert load_config(cls, printed) == load_config(cls, base, args)


def test_dotted_overrides_reach_nested_fields(capsys, tmp_path):
    code, out, err = run(
        ["ppo", "--rollout.vllm.dtype", "bfloat16", "--rollout.server.timeout_s", "5",
         "--rollout.engine", "vllm", "--show_config"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    shown = yaml.safe_load(out)["rollout"]
    assert shown["engine"] == "vllm" and shown["vllm"]["dtype"] == "bfloat16"
    assert shown["server"]["timeout_s"] == 5.0
    code, out, err = run(["pei", "--ppo.beta", "0.3", "--controller.eta", "0.5", "--show_config"],
                         capsys)  # fmt: skip
    assert code == 0, err
    shown = yaml.safe_load(out)
    assert shown["ppo"]["beta"] == 0.3 and shown["controller"]["eta"] == 0.5
    assert shown["ppo"]["actor_lr"] == 5e-5  # the rest of the rounds' PPO config: the tiny one


# ------------------------------------------------------------------ user errors


def _broken_yaml(tmp_path: Path) -> str:
    path = tmp_path / "broken.yaml"
    path.write_text("total_steps: 3\nbeta: [0.1\n", encoding="utf-8")
    return str(path)


def _duplicated_yaml(tmp_path: Path) -> str:
    path = tmp_path / "twice.yaml"
    path.write_text("total_steps: 3\nbeta: 0.1\nbeta: 0.2\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["ppo", "--total_steps", "abc"], "error: total_steps: expected an integer, got 'abc'"),
        (["ppo", "--betta", "1"], "error: unknown field 'betta' of PPOConfig; did you mean 'beta"),
        (["ppo", "--rewards", "{type: python}"], "error: rewards[0].fn: required for type python"),
        (["ppo", "--beta", "-1"], "error: beta: expected >= 0, got -1.0"),
        (["ppo", "--actor_lr", "-1e-6"], "error: actor_lr: expected >= 0, got -1e-06"),
        (["ppo", "--critic_lr", "-0.1"], "error: critic_lr: expected >= 0, got -0.1"),
        (["ppo", "--top_p", "2"], "error: top_p: expected in (0, 1], got 2.0"),
        (["ppo", "--save_every", "-1"], "error: save_every: expected >= 0, got -1"),
        (["ppo", "--rollout.vllm.dtype", "fp8"], "error: rollout.vllm.dtype: expected one of auto"),
        (["filter", "--top_p", "2"], "error: top_p: expected in (0, 1], got 2.0"),
        (["filter", "--n", "1"], "error: n: expected >= 2 samples per prompt"),
        (["pei", "--ppo.top_p", "0"], "error: ppo.top_p: expected in (0, 1], got 0.0"),
        (["pei", "--beta0", "-1"], "error: beta0: expected >= 0, got -1.0"),
        (["rm", "train", "--learning_rate", "-1"], "error: learning_rate: expected >= 0, got -1.0"),
        (["rm", "train", "--cl_dropout", "1"], "error: cl_dropout: expected in [0, 1), got 1.0"),
        (["sft", "--learning_rate", "-1e-5"], "error: learning_rate: expected >= 0, got -1e-05"),
        (["pretrain", "--save_every", "-1"], "error: save_every: expected >= 0, got -1"),
        (["eval", "gsb", "--candidate", "c", "--margin", "-1"], "error: margin: expected >= 0"),
        (["eval", "gsb", "--candidate", "c", "--judge", "llm"],
         "error: judge: llm needs llm_judge.base_url and llm_judge.model"),
        (["eval", "gsb", "--candidate", "c", "--llm_judge.model", "m"],
         "error: llm_judge.base_url: required"),
        (["eval", "mcq", "--data", "d", "--shots", "-5"], "error: shots: expected >= 0, got -5"),
        (["data", "bucket", "--docs", "d", "--out", "o", "--bucketing.pad_threshold", "1"],
         "error: bucketing.pad_threshold: expected in [0, 1), got 1.0"),
        (["tiny", "build", "--seed", "-1"], "error: seed: expected >= 0, got -1"),
        (["rm", "serve", "--model", "m", "--port", "0"], "error: port: expected in [1, 65535]"),
        (["rm", "eval", "--model", "m"], "error: data: required"),
    ],
)  # fmt: skip
def test_each_user_error_is_one_line_naming_the_field_and_exit_2(args, line, capsys):
    code, out, err = run([*args, "--show_config"], capsys)
    assert code == 2 and out == ""
    assert err.startswith(line) and err.count("\n") == 1, err


def test_config_file_errors_name_the_file_and_line(capsys, tmp_path):
    broken = _broken_yaml(tmp_path)
    code, _, err = run(["ppo", "--config", broken], capsys)
    assert code == 2 and err.startswith(f"error: {broken}:3: YAML syntax error")
    twice = _duplicated_yaml(tmp_path)
    code, _, err = run(["ppo", "--config", twice], capsys)
    assert code == 2
    assert err == f"error: {twice}:3: duplicate key 'beta' (first given on line 2)\n"


def test_old_spellings_still_work_with_one_warning(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("align.core.config._warned", set())  # warned once per process
    code, out, err = run(
        ["ppo", "--vllm-dtype", "bfloat16", "--rollout-engine", "vllm", "--resume_from_checkpoint",
         "latest", "--num-processes", "0", "--show_config"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    shown = yaml.safe_load(out)
    assert shown["rollout"]["vllm"]["dtype"] == "bfloat16" and shown["resume_from"] == "latest"
    assert "warning: vllm_dtype: old spelling, read as rollout.vllm.dtype" in err
    code, out, err = run(["filter", "--reward", "tiny", "--no-cache", "--engine", "vllm",
                          "--mean-range", "0,1", "--show_config"], capsys)  # fmt: skip
    assert code == 0, err
    shown = yaml.safe_load(out)
    assert shown["rewards"] == [{"type": "rule", "rule": "tiny"}] and shown["use_cache"] is False
    assert shown["rollout"]["engine"] == "vllm" and shown["mean_range"] == [0.0, 1.0]
    old = tmp_path / "old_pei.yaml"
    old.write_text("ppo_config: tiny\nppo: {vllm_dtype: float16}\n", encoding="utf-8")
    code, out, err = run(["pei", "--config", str(old), "--show_config"], capsys)
    assert code == 0, err
    assert yaml.safe_load(out)["ppo"]["rollout"]["vllm"]["dtype"] == "float16"


def test_removed_options_say_what_replaced_them(capsys):
    code, _, err = run(["filter", "--engine-options", "{dtype: bfloat16}"], capsys)
    assert code == 2 and err.startswith("error: engine_options: no longer a field; set rollout.")
    code, _, err = run(["rm", "train", "--resume_from", "latest"], capsys)
    assert code == 2 and "resume_from: not supported: UFRM stages save no checkpoints" in err
