"""User mistakes at run time, through the command line as a user runs it (a subprocess): each is
one line on stderr naming the field and the path, exit status 2, no traceback, nothing written
that a rerun would trip over, and found before any model loads or any sampling starts.

Model directories here are *shells*: a ``config.json`` and an empty ``model.safetensors``. They
pass the directory checks but cannot be loaded, so a command that loaded a model (or built the
tiny world, which these arguments never need) before reaching the mistake under test would
fail with a traceback instead of the expected line: the tests also pin the order of the checks.

A read-only and a full file system are real ones: a tmpfs mounted in a private mount namespace
(``unshare -m``; root ignores permission bits, so chmod could not stand in for read-only). Where
mount namespaces are not allowed, those cases fall back to a chmod'ed folder (non-root) or skip.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1"}


def _env() -> dict:
    env = {**os.environ, **ENV}
    env.pop("ALIGN_DEBUG", None)  # it turns the one-line errors back into tracebacks
    return env


def align(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "align.cli", *map(str, args)],
        capture_output=True, text=True, env=_env(), timeout=600,
    )  # fmt: skip


def one_line_error(out: subprocess.CompletedProcess, *needles: str | Path) -> str:
    """The single stderr line of a user error, after checking exit status 2 and the needles."""
    assert out.returncode == 2, f"exit {out.returncode}\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    assert out.stdout.strip() == "", out.stdout  # no progress bar or table before the error
    for needle in needles:
        assert str(needle) in line, f"{needle!r} not in {line!r}"
    return line


# ------------------------------------------------------------------ inputs


def shell_model(path: Path) -> Path:
    """A model directory that passes the checks but cannot be loaded (see the module doc)."""
    path.mkdir(parents=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (path / "model.safetensors").write_bytes(b"")
    return path


def pickle_model(path: Path) -> Path:
    """A model directory with ``pytorch_model.bin`` weights only."""
    path.mkdir(parents=True)
    config = {"architectures": ["LlamaForSequenceClassification"], "model_type": "llama"}
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (path / "pytorch_model.bin").write_bytes(b"not loaded")
    return path


def prompts_file(path: Path, categories=("保险", "金融百科")) -> Path:
    rows = [{"prompt": f"问题 {i}", "category": c} for i, c in enumerate(categories)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


@pytest.fixture()
def inputs(tmp_path) -> dict[str, Path]:
    d = tmp_path / "in"
    d.mkdir()
    prefs = d / "prefs.jsonl"
    prefs.write_text(
        json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "category": "保险"}) + "\n",
        encoding="utf-8",
    )
    (d / "bench").mkdir()
    docs = d / "docs.jsonl"
    docs.write_text(json.dumps({"input_ids": [5, 6, 7]}) + "\n", encoding="utf-8")
    return {
        "docs": docs,
        "model": shell_model(d / "model"),
        "critic": shell_model(d / "critic"),
        "prompts": prompts_file(d / "prompts.jsonl"),
        "prefs": prefs,
        "bench": d / "bench",
        "empty": _touch(d / "empty.jsonl"),
    }


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def ppo_args(i: dict, **changes) -> list[str]:
    values = {
        "policy": i["model"], "critic": i["critic"], "rewards": "tiny", "prompts": i["prompts"],
        "eval_prompts": i["prompts"], "output_dir": i["prompts"].parent / "runs" / "ppo",
        **changes,
    }  # fmt: skip
    return ["ppo", *(x for k, v in values.items() for x in (f"--{k}", str(v)))]


def pei_args(i: dict, out: Path, ppo: dict | None = None) -> list[str]:
    ppo = {
        "policy": i["model"], "critic": i["critic"], "rewards": "tiny", "prompts": i["prompts"],
        "eval_prompts": i["prompts"], **(ppo or {}),
    }  # fmt: skip
    return [
        "pei", "--output_dir", str(out), "--rm_pairs", str(i["prefs"]), "--judge", "tiny",
        *(x for k, v in ppo.items() for x in (f"--ppo.{k}", str(v))),
    ]  # fmt: skip


# Every command that writes an output location: (name, option naming it, arguments for ``out``).
# ``out`` is a folder, except for the filter, whose --out is the kept-prompts file.
WRITERS = {
    "ppo": ("output_dir", lambda i, out: ppo_args(i, output_dir=out)),
    "pei": ("output_dir", lambda i, out: pei_args(i, out)),
    "filter": (
        "out",
        lambda i, out: [
            "filter", "--prompts", i["prompts"], "--policy", i["model"], "--rewards", "tiny",
            "--out", out / "kept.jsonl",
        ],
    ),
    "rm train": (
        "output_dir",
        lambda i, out: [
            "rm", "train", "--model", i["critic"], "--train_data", i["prefs"], "--output_dir", out,
        ],
    ),
    "eval gsb": (
        "out",
        lambda i, out: [
            "eval", "gsb", "--candidate", i["model"], "--baseline", i["model"],
            "--prompts", i["prompts"], "--rewards", "tiny", "--out", out,
        ],
    ),
    "eval mcq": (
        "out",
        lambda i, out: ["eval", "mcq", "--data", i["bench"], "--policy", i["model"], "--out", out],
    ),
    "data bucket": ("out", lambda i, out: ["data", "bucket", "--docs", i["docs"], "--out", out]),
}  # fmt: skip


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ------------------------------------------------------------------ 1. output locations


@pytest.mark.parametrize("command", WRITERS)
def test_output_under_a_regular_file_is_one_line(tmp_path, inputs, command):
    field, make = WRITERS[command]
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder\n", encoding="utf-8")
    out = blocker / "run"
    before = _listing(tmp_path)
    result = align(*make(inputs, out))
    one_line_error(result, f"{field}: ", out, "is a file, not a directory")
    assert _listing(tmp_path) == before  # nothing created, no probe file left behind
    assert blocker.read_text(encoding="utf-8") == "a file, not a folder\n"


def _can_mount() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


CAN_MOUNT = _can_mount()


def in_mount_namespace(
    mount_options: str, root: Path, args: list, fill: bool = False
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``align ARGS`` with a fresh tmpfs at ``root`` (in a private mount namespace, gone
    with the process); ``fill`` fills it to the last byte first. Returns the result and what
    the tmpfs held afterwards."""
    listing = root.parent / f"{root.name}.listing"
    command = shlex.join([sys.executable, "-m", "align.cli", *map(str, args)])
    where = shlex.quote(str(root))
    fill_cmd = f"dd if=/dev/zero of={where}/fill bs=4k 2>/dev/null;" if fill else ""
    script = (
        f"mount -t tmpfs -o {mount_options} tmpfs {where} || exit 99; "
        f"{fill_cmd} {command}; rc=$?; ls -A {where} > {shlex.quote(str(listing))}; exit $rc"
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True, text=True, env=_env(), timeout=600,
    )  # fmt: skip
    assert result.returncode != 99, result.stderr
    return result, listing.read_text(encoding="utf-8").split()


@pytest.mark.parametrize("command", WRITERS)
def test_read_only_output_is_one_line(tmp_path, inputs, command):
    field, make = WRITERS[command]
    root = tmp_path / "mnt"
    root.mkdir()
    out = root / "run"
    if CAN_MOUNT:
        result, left = in_mount_namespace("ro,size=64k", root, make(inputs, out))
        one_line_error(result, f"{field}: ", out, "read-only file system")
        assert left == []
    elif os.geteuid() != 0:
        root.chmod(0o555)
        try:
            result = align(*make(inputs, out))
        finally:
            root.chmod(0o755)
        one_line_error(result, f"{field}: ", out, "not writable (permission denied)")
        assert list(root.iterdir()) == []
    else:
        pytest.skip("root ignores chmod and mount namespaces are not allowed here")


@pytest.mark.skipif(not CAN_MOUNT, reason="needs a private mount namespace (unshare -m)")
@pytest.mark.parametrize("command", WRITERS)
def test_full_output_file_system_is_one_line(tmp_path, inputs, command):
    field, make = WRITERS[command]
    root = tmp_path / "mnt"
    root.mkdir()
    out = root / "run"
    result, left = in_mount_namespace("size=64k", root, make(inputs, out), fill=True)
    one_line_error(result, f"{field}: ", out, "no space left on device")
    assert left == ["fill"]  # no folder made, the probe file removed


@pytest.mark.skipif(not CAN_MOUNT, reason="needs a private mount namespace (unshare -m)")
def test_disk_full_while_writing_names_the_file(tmp_path):
    """Past the checks (``data financeiq-prefs`` has none), a write that runs out of space is
    one line naming the file being written, and its temporary file is removed."""
    fiq = tmp_path / "fiq"
    fiq.mkdir()
    rows = "".join(f"{i},{'问' * 300}{i}？,甲,乙,丙,丁,C\n" for i in range(100))
    (fiq / "基金.csv").write_text(",Question,A,B,C,D,Answer\n" + rows, encoding="utf-8")
    root = tmp_path / "mnt"
    root.mkdir()
    out = root / "prefs.jsonl"
    args = ["data", "financeiq-prefs", fiq, "--out", out]
    result, left = in_mount_namespace("size=64k", root, args)
    one_line_error(result, "cannot write", out, "No space left on device")
    assert left == []


def test_filter_report_dir_checked_before_sampling(tmp_path, inputs):
    """The kept file's folder is fine, the report folder is not: still nothing is sampled."""
    blocker = tmp_path / "taken"
    blocker.write_text("x", encoding="utf-8")
    result = align(
        "filter", "--prompts", inputs["prompts"], "--policy", inputs["model"], "--rewards", "tiny",
        "--out", tmp_path / "kept.jsonl", "--report_dir", blocker / "report",
    )  # fmt: skip
    one_line_error(result, "report_dir: ", blocker / "report", "is a file")
    assert not (tmp_path / "kept.jsonl").exists()


# ------------------------------------------------------------------ 2. model directories


def _pickle_line(result, field: str, directory: Path) -> None:
    line = one_line_error(result, f"{field}: ", directory, "pytorch_model.bin", "safetensors")
    assert "use_safetensors=False).save_pretrained(" in line  # how to convert


@pytest.mark.parametrize("field", ["policy", "critic", "reference"])
def test_ppo_refuses_pickle_weights_in_one_line(tmp_path, inputs, field):
    bad = pickle_model(tmp_path / "bin_model")
    _pickle_line(align(*ppo_args(inputs, **{field: bad})), field, bad)
    assert not (inputs["prompts"].parent / "runs").exists()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p, "no such model directory"),  # not there
        (lambda p: (p.mkdir(), p)[1], "no config.json"),  # empty folder
        (lambda p: (p.write_text("x"), p)[1], "expected a model directory, got a file"),
        (lambda p: (shell_model(p), (p / "model.safetensors").unlink(), p)[2], "no model weights"),
    ],
    ids=["missing", "no-config", "a-file", "no-weights"],
)
def test_ppo_bad_policy_path_names_the_field(tmp_path, inputs, make, expected):
    bad = make(tmp_path / "policy_dir")
    one_line_error(align(*ppo_args(inputs, policy=bad)), "policy: ", bad, expected)


def test_filter_refuses_pickle_policy(tmp_path, inputs):
    bad = pickle_model(tmp_path / "bin_model")
    out = tmp_path / "kept.jsonl"
    result = align(
        "filter", "--prompts", inputs["prompts"], "--policy", bad, "--rewards", "tiny", "--out", out
    )
    _pickle_line(result, "policy", bad)
    assert not out.exists() and not (tmp_path / "kept_report").exists()


@pytest.mark.parametrize("side", ["candidate", "baseline"])
def test_eval_gsb_refuses_pickle_or_missing_policies(tmp_path, inputs, side):
    bad = pickle_model(tmp_path / "bin_model")
    other = "baseline" if side == "candidate" else "candidate"
    args = ["eval", "gsb", f"--{side}", bad, f"--{other}", inputs["model"], "--rewards", "tiny"]
    result = align(*args, "--prompts", inputs["prompts"], "--out", tmp_path / "gsb")
    _pickle_line(result, side, bad)
    missing = tmp_path / "nowhere"
    args = [
        "eval", "gsb", f"--{side}", missing, f"--{other}", inputs["model"], "--rewards", "tiny"
    ]  # fmt: skip
    result = align(*args, "--prompts", inputs["prompts"], "--out", tmp_path / "gsb")
    one_line_error(result, f"{side}: ", missing, "no such model directory")
    assert not (tmp_path / "gsb").exists()


def test_eval_mcq_refuses_pickle_policy(tmp_path, inputs):
    bad = pickle_model(tmp_path / "bin_model")
    out = tmp_path / "m"
    result = align("eval", "mcq", "--data", inputs["bench"], "--policy", bad, "--out", out)
    _pickle_line(result, "policy", bad)
    assert not (tmp_path / "m").exists()


def test_pei_checks_its_models_before_anything(tmp_path, inputs):
    bad = pickle_model(tmp_path / "bin_model")
    out = tmp_path / "pei"
    _pickle_line(align(*pei_args(inputs, out, {"reference": bad})), "ppo.reference", bad)
    missing = tmp_path / "no_rm"
    result = align(*pei_args(inputs, out), "--reward_model", missing)
    one_line_error(result, "reward_model: ", missing, "no such model directory")
    assert not out.exists()


# ------------------------------------------------------------------ 3-5. empty data


@pytest.mark.parametrize("content", ["", "\n  \n"], ids=["empty", "blank-lines"])
def test_validate_empty_file_exits_2(tmp_path, content):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content, encoding="utf-8")
    result = align("data", "validate", path, "--kind", "prompts")
    one_line_error(result, path, "has no records")


@pytest.mark.parametrize("field", ["eval_prompts", "prompts"])
def test_ppo_empty_prompt_file_names_field_and_file(inputs, field):
    """An empty --eval_prompts used to skip evaluation silently; an empty --prompts failed with
    'the prompt set is empty' and no file. Both stop before a model loads (shell models)."""
    result = align(*ppo_args(inputs, **{field: inputs["empty"]}))
    one_line_error(result, f"{field}: ", inputs["empty"], "no prompt records")
    assert not (inputs["prompts"].parent / "runs").exists()


def test_pei_empty_eval_prompts_and_unknown_refilter_category(tmp_path, inputs):
    out = tmp_path / "pei"
    result = align(*pei_args(inputs, out), "--eval_prompts", inputs["empty"])
    one_line_error(result, "eval_prompts: ", inputs["empty"], "no prompt records")
    result = align(
        *pei_args(inputs, out), "--refilter", "{n: 4}", "--refilter_categories", "[银行]"
    )
    one_line_error(result, "refilter_categories: ", "银行", inputs["prompts"], "保险")
    assert not out.exists()  # nothing written before the data is known good


def test_eval_gsb_empty_prompts_names_the_file(tmp_path, inputs):
    result = align(
        "eval", "gsb", "--candidate", inputs["model"], "--baseline", inputs["model"],
        "--prompts", inputs["empty"], "--rewards", "tiny", "--out", tmp_path / "gsb",
    )  # fmt: skip
    one_line_error(result, "prompts: ", inputs["empty"], "no prompt records")
    assert not (tmp_path / "gsb").exists()


# ------------------------------------------------------------------ 6. no silent toy fallbacks


def align_with_cache(cache: Path, *args: str | Path) -> subprocess.CompletedProcess:
    """``align ARGS`` with the tiny world's cache at ``cache`` (empty: a build would show)."""
    return subprocess.run(
        [sys.executable, "-m", "align.cli", *map(str, args)],
        capture_output=True, text=True, env={**_env(), "ALIGN_CACHE": str(cache)}, timeout=600,
    )  # fmt: skip


# Each command family given a model path and nothing else: (arguments, the field the line names
# first, what else it names). The tiny world used to fill these in without a word (a 1.3 M
# critic for a 7B policy, the tiny world's prompts and rule).
MODEL_WITHOUT_INPUTS = {
    "ppo": (
        lambda i, out: ["ppo", "--policy", i["model"], "--output_dir", out],
        "critic: ",
        ["policy: ", "critic_from_policy", "also missing: rewards, prompts, eval_prompts"],
    ),
    "pei": (
        lambda i, out: ["pei", "--ppo.policy", i["model"], "--output_dir", out],
        "ppo.critic: ",
        ["ppo.policy: ", "also missing: ppo.rewards, ppo.prompts, eval_prompts, rm_pairs, judge"],
    ),
    "filter": (
        lambda i, out: ["filter", "--policy", i["model"], "--out", out / "kept.jsonl"],
        "prompts: ",
        ["policy: ", "also missing: rewards"],
    ),
    "sft": (
        lambda i, out: ["sft", "--model", i["model"], "--bf16", "false", "--output_dir", out],
        "train_data: ",
        ["model: ", "SFT record files"],
    ),
    "pretrain": (
        lambda i, out: ["pretrain", "--model", i["model"], "--output_dir", out],
        "docs: ",
        ["model: ", "documents {text, category?}"],
    ),
    "rm train": (
        lambda i, out: ["rm", "train", "--model", i["critic"], "--output_dir", out],
        "train_data: ",
        ["model: ", "preference records"],
    ),
    "eval gsb": (
        lambda i, out: ["eval", "gsb", "--candidate", i["model"], "--out", out],
        "baseline: ",
        ["candidate: ", "'tiny'", "also missing: prompts, rewards"],
    ),
}


@pytest.mark.parametrize("command", MODEL_WITHOUT_INPUTS)
def test_a_model_path_without_its_inputs_is_one_line_not_the_tiny_world(tmp_path, inputs, command):
    """Once a model path is given, a missing input is one line naming it and what it expects:
    before any model loads (the models are shells) and without building the tiny world."""
    make, field, also = MODEL_WITHOUT_INPUTS[command]
    cache, out = tmp_path / "cache", tmp_path / "run"
    cache.mkdir()
    result = align_with_cache(cache, *make(inputs, out))
    line = one_line_error(result, field, *also)
    assert line.startswith(f"error: {field}required once a model path is given"), line
    assert "the tiny world fills in only when no model path is given" in line
    assert not out.exists() and list(cache.iterdir()) == []
