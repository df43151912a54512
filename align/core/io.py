"""Files a reader (or a killed run) never sees half of, and a run's ``metrics.jsonl``.

- Whole files: :func:`atomic_path` (a temporary sibling any writer fills, renamed over the target
  when the block ends, removed when it raises), and on it :func:`atomic_write_bytes`,
  :func:`atomic_write_text`, :func:`atomic_write_json`.
- Whole directories: :func:`atomic_directory` (a fresh temporary sibling directory renamed into
  place) and :func:`replace_directory` (the rename, replacing an older directory), which
  :func:`align.core.checkpoints.atomic_checkpoint` uses across processes.
- Metrics: :class:`MetricsFile` appends one JSON line per record; :func:`open_metrics` opens it
  for a fresh run (which refuses a file of an earlier run) or for a resumed run, keeping only
  the records of steps up to the checkpoint's (the one truncate-on-resume rule). A last line
  without its newline (a write cut short by a kill) is dropped with a warning naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"

# --------------------------------------------------------------------------- whole files


@contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, fsync: bool = False, keep_suffix: bool = False
) -> Iterator[Path]:
    """A temporary path in ``path``'s folder (created if missing) for the new content; when the
    block ends it replaces ``path`` in one rename, so a reader sees the old file or the new one,
    never half of one. When the block raises, the temporary file is removed and ``path`` is left
    as it was; an ``OSError`` that names no file (a full disk) is raised again naming ``path``.
    The temporary name starts with a dot and ends in ``.tmp`` (a glob for ``path``'s suffix
    never finds it), or, with ``keep_suffix``, in ``path``'s suffix (``savefig`` reads the
    format from it); ``fsync`` flushes it to disk before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if keep_suffix else ""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        if error.errno and error.filename is None:
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)  # gone already after the rename


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    with atomic_path(path, fsync=True) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], value: Any, indent: int | None = 2) -> Path:
    """Write ``value`` as JSON (not ASCII-escaped, a final newline) atomically; returns ``path``."""
    return atomic_write_text(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- whole directories


def replace_directory(tmp: Path, final: Path) -> None:
    """Put the complete directory ``tmp`` at ``final`` by a rename, replacing an older
    ``final`` (a crash between the two steps leaves ``tmp``, never half a ``final``)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


@contextmanager
def atomic_directory(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh temporary directory next to ``final`` to fill; when the block ends it becomes
    ``final`` (replacing an older one), when the block raises it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        replace_directory(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after the rename


# --------------------------------------------------------------------------- JSON lines


def _complete_lines(path: Path, repair: bool) -> list[tuple[bytes, dict]]:
    """``(line, record)`` of every complete line of ``path`` (see :func:`read_jsonl`)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with its newline
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: line {number} is not JSON ({err})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number}: expected a JSON object")
        out.append((line, record))
    if torn:
        warnings.warn(
            f"{path}: dropped an incomplete last line (line {len(lines) + 1}, {len(torn)} bytes, "
            "cut short when its run was killed)",
            stacklevel=3,
        )
        if repair:
            with open(path, "r+b") as f:
                f.truncate(len(data) - len(torn))
    return out


def read_jsonl(path: str | os.PathLike[str], repair: bool = False) -> list[dict]:
    """The records of a JSON-lines file written one appended line at a time ([] when there is
    no file). A last line without its newline is a write a kill cut short: it is dropped with a
    warning naming the file, and with ``repair`` also cut off the file. Any other line that is
    not a JSON object is an error naming the file and the line."""
    return [record for _, record in _complete_lines(Path(path), repair)]


class MetricsFile:
    """A run's metrics, one JSON object per line, appended as they come (main process)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, record: dict) -> None:
        """One line; each call opens, writes and closes, so a kill cuts at most that line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def records(self) -> list[dict]:
        """Every complete record (see :func:`read_jsonl`)."""
        return read_jsonl(self.path)

    def keep_until(self, step: int) -> int:
        """Keep the records of steps up to ``step`` (the lines a resumed run will not write
        again) as they were written, the file replaced atomically; returns how many."""
        kept = [line for line, r in _complete_lines(self.path, False) if r.get("step", 0) <= step]
        atomic_write_bytes(self.path, b"".join(line + b"\n" for line in kept))
        return len(kept)


def earlier_run_error(path: str | os.PathLike[str], resumable: bool = True) -> str | None:
    """Why a fresh run may not write the metrics file ``path`` (it holds an earlier run's
    lines), as one line saying what to do; None when it is absent or empty. ``resumable``: the
    run directory holds a checkpoint that run can continue from."""
    path = Path(path)
    if not (path.is_file() and path.stat().st_size):
        return None
    if resumable:
        todo = "pass --resume_from latest to continue that run"
    else:
        todo = "it saved no checkpoint to resume from: delete the file to start over there"
    return f"output_dir: {path} holds an earlier run's metrics; {todo}, or use another output_dir"


def open_metrics(path: str | os.PathLike[str], resume_step: int | None) -> MetricsFile:
    """The metrics file of a run. Fresh (``resume_step`` None): the file must be empty or
    absent (ValueError otherwise: appending would mix two runs) and is created empty. Resumed
    from the checkpoint of step ``resume_step``: the records of later steps (a killed run's
    tail) are dropped, as is an incomplete last line (with a warning)."""
    metrics = MetricsFile(path)
    if resume_step is None:
        if error := earlier_run_error(metrics.path):
            raise ValueError(error)
        metrics.path.parent.mkdir(parents=True, exist_ok=True)
        metrics.path.touch()
    else:
        metrics.keep_until(resume_step)
    return metrics
