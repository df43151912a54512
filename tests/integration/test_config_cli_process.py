"""Config mistakes through the real ``align`` process: exit status 2, one line on stderr naming
the field, no traceback; an old spelling still runs, with one warning line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def align(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "align.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["ppo", "--total_steps", "abc"], "error: total_steps: expected an integer, got 'abc'"),
        (["ppo", "--beta", "-1"], "error: beta: expected >= 0, got -1.0"),
        (["ppo", "--rewards", "{type: python}"], "error: rewards[0].fn: required for type python"),
        (["filter", "--max_new_tokns", "4"], "error: unknown field 'max_new_tokns' of FilterConfig;"
                                            " did you mean 'max_new_tokens'?"),
    ],
)  # fmt: skip
def test_a_config_mistake_is_one_line_and_exit_2(args, line):
    done = align(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(line) and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "ppo.yaml"
    path.write_text("total_steps: 3\nrollout:\n  engine: [hf\n", encoding="utf-8")
    done = align("ppo", "--config", str(path))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: {path}:4: YAML syntax error"), done.stderr


def test_an_old_spelling_runs_with_one_warning():
    done = align("ppo", "--config", "tiny", "--vllm_dtype", "float16", "--show-config")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "warning: vllm_dtype: old spelling, read as rollout.vllm.dtype\n"
    assert "dtype: float16" in done.stdout
