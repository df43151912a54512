"""Atomic files and directories, JSON lines with a torn tail, and the metrics file's one
truncate-on-resume rule (:mod:`align.core.io`)."""

from __future__ import annotations

import errno
import json
import warnings

import pytest

from align.core.io import (
    MetricsFile,
    atomic_directory,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    earlier_run_error,
    open_metrics,
    read_jsonl,
)


def leftovers(folder):
    """Everything in ``folder`` but the files a test named."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "report.md"
    assert atomic_write_text(path, "old\n") == path
    atomic_write_text(path, "新\n")
    assert path.read_bytes() == "新\n".encode()
    atomic_write_json(tmp_path / "sub" / "a.json", {"类": [1.5, None]})
    assert (tmp_path / "sub" / "a.json").read_text(encoding="utf-8") == (
        '{\n  "类": [\n    1.5,\n    null\n  ]\n}\n'
    )
    assert leftovers(tmp_path / "sub") == []


def test_a_failed_write_keeps_the_old_file_and_names_the_path(tmp_path):
    path = tmp_path / "kept.jsonl"
    path.write_text("old\n")
    # what a write on a full disk raises: an OSError with an errno and no file name
    with pytest.raises(OSError, match="No space left") as caught, atomic_path(path) as tmp:
        tmp.write_text("half of the new conte")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.filename == str(path) and caught.value.errno == errno.ENOSPC
    assert path.read_text() == "old\n"
    assert leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:  # any exception
        tmp.write_text("x")
        raise KeyboardInterrupt
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []


def test_temporary_name_hides_from_globs_unless_the_suffix_is_needed(tmp_path):
    with atomic_path(tmp_path / "model.safetensors") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".tmp"
        tmp.write_bytes(b"x")
    with atomic_path(tmp_path / "mu.png", keep_suffix=True) as tmp:
        assert tmp.suffix == ".png" and tmp.name.startswith(".")
        tmp.write_bytes(b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "mu.png"]


def test_atomic_directory_replaces_or_leaves_nothing(tmp_path):
    final = tmp_path / "world"
    with atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_directory(final) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # replaced, not merged
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "c.txt").write_text("3")
        raise RuntimeError("build failed")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]


def test_read_jsonl_drops_a_torn_last_line_with_a_warning_naming_the_file(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_bytes(b'{"key": "a"}\n\n{"key": "b"}\n{"key": "c", "sco')
    with pytest.warns(UserWarning, match=rf"{path}: dropped an incomplete last line \(line 4"):
        assert read_jsonl(path) == [{"key": "a"}, {"key": "b"}]
    assert path.read_bytes().endswith(b'"sco')  # reading alone changes nothing
    with pytest.warns(UserWarning):
        read_jsonl(path, repair=True)
    assert path.read_bytes() == b'{"key": "a"}\n\n{"key": "b"}\n'
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete file reads without a warning
        assert len(read_jsonl(path)) == 2
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_read_jsonl_names_file_and_line_of_a_broken_middle_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1\n{"step": 2}\n')
    with pytest.raises(ValueError, match=rf"{path}: line 2 is not JSON"):
        read_jsonl(path)
    path.write_text('{"step": 0}\n[1, 2]\n')
    with pytest.raises(ValueError, match=rf"{path}: line 2: expected a JSON object"):
        read_jsonl(path)


def test_fresh_run_refuses_an_earlier_runs_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert earlier_run_error(path) is None  # absent
    metrics = open_metrics(path, None)
    assert path.read_bytes() == b""  # created empty
    assert earlier_run_error(path) is None  # empty: nothing to mix with
    metrics.append({"step": 0, "eval/score": 0.5})
    metrics.append({"step": 1, "loss": 2.0})
    # the reproducer: a second fresh run into this directory appended 0, 1, 0, 1, 2
    with pytest.raises(ValueError) as caught:
        open_metrics(path, None)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "--resume_from latest" in message and "another output_dir" in message
    assert [r["step"] for r in read_jsonl(path)] == [0, 1]  # untouched


def test_resume_keeps_the_checkpoints_steps_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        '{"step": 0, "eval/score": 0.1}',
        '{"step": 1, "loss": 1.0000000000000002, "类": "x"}',
        '{"step": 2, "loss": NaN}',
        '{"step": 2, "eval/score": 0.3}',  # a second record of the checkpoint's step
        '{"step": 3, "loss": 0.5}',  # after the checkpoint: a killed run's tail
    ]
    path.write_text("\n".join(lines) + '\n{"step": 4, "lo', encoding="utf-8")
    with pytest.warns(UserWarning, match=rf"{path}: dropped an incomplete last line"):
        metrics = open_metrics(path, 2)
    assert path.read_text(encoding="utf-8") == "\n".join(lines[:4]) + "\n"  # bytes as written
    metrics.append({"step": 3, "loss": 0.25})
    assert [r["step"] for r in MetricsFile(path).records()] == [0, 1, 2, 2, 3]
    assert open_metrics(tmp_path / "none" / "metrics.jsonl", 5).records() == []
    assert leftovers(tmp_path) == []


def test_metrics_append_writes_one_json_object_per_line(tmp_path):
    metrics = MetricsFile(tmp_path / "run" / "metrics.jsonl")
    metrics.append({"step": 1, "reward/类": 0.5})
    metrics.append({"step": 2, "x": float("inf")})
    raw = metrics.path.read_text(encoding="utf-8").splitlines()
    assert raw[0] == '{"step": 1, "reward/类": 0.5}'
    assert json.loads(raw[1]) == {"step": 2, "x": float("inf")}
