"""The align command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def align(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "align.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=600,
    )


def test_help_lists_commands_and_version():
    out = align("--help")
    assert out.returncode == 0
    assert "tiny" in out.stdout and "data" in out.stdout
    version = align("--version")
    assert version.returncode == 0 and version.stdout.startswith("align 0.")


@pytest.mark.parametrize(
    ("line", "row", "field"),
    [
        ('{"prompt": "什么是市盈率？"}', 2, "category"),  # missing field
        ('{"prompt": 42, "category": "金融百科"}', 2, "prompt"),  # wrong type
        ('{"prompt": "", "category": "金融百科"}', 2, "prompt"),  # empty prompt
        ('{"prompt": "x", "category": "金融百科"', 2, None),  # bad JSON line
    ],
)
def test_validate_names_file_row_and_field_and_exits_2(tmp_path, line, row, field):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "ok", "category": "保险"}\n' + line + "\n", encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    out = align("data", "validate", str(path), "--kind", "prompts")
    assert out.returncode == 2
    first = out.stderr.splitlines()[0]
    assert str(path) in first and f"row {row}" in first
    if field:
        assert f"field '{field}'" in first
    assert "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_validate_reports_counts(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": "q", "chosen": "a", "rejected": "b", "category": c}
        for c in ["保险", "保险", "金融百科"]
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    out = align("data", "validate", str(path), "--kind", "prefs")
    assert out.returncode == 0, out.stderr
    assert "3 valid prefs records" in out.stdout
    assert "保险" in out.stdout and "│    2 │" in out.stdout


def test_user_errors_are_one_line_exit_2(tmp_path):
    missing = align("data", "validate", str(tmp_path / "nope.jsonl"), "--kind", "prompts")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "nope.jsonl" in missing.stderr
    bad_kind = align("data", "validate", str(tmp_path), "--kind", "nonsense")
    assert bad_kind.returncode == 2 and "prompts, prefs, sft, mcq" in bad_kind.stderr
    usage = align("tiny", "build", "--no-such-flag")
    assert usage.returncode == 2


def test_tiny_build_reuses_the_cache(tiny_world):
    out = align("tiny", "build", "--out", str(tiny_world.root))
    assert out.returncode == 0, out.stderr
    assert "tiny world cached at" in out.stdout
    assert "held-out prompts" in out.stdout
