"""Output paths the user names, checked before any expensive work (loading models, sampling).

A run that can only fail at its first write (a read-only or full file system, a regular file
where a folder is needed) should fail at once, with one line naming the config field and the
path, and leave nothing behind: the check creates no folder, and its probe file is removed.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

_PROBE_BYTES = b"\0" * 4096  # one page: a full file system refuses it (an empty file may pass)


class OutputPathError(OSError):
    """An output path cannot be written (read-only, full, permission). The message names the
    field and the path; the ``align`` command line prints it as one line and exits 2.
    ``errno`` is the error the probe write got."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (a broken symlink counts as existing)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def _reason(error: OSError) -> str:
    names = {
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on device",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }
    if hasattr(errno, "EDQUOT"):
        names[errno.EDQUOT] = "disk quota exceeded"
    return names.get(error.errno, error.strerror or type(error).__name__)


def _probe(directory: Path, field: str, shown: Path) -> None:
    """Write (and remove) one page in ``directory``; OutputPathError naming ``shown`` if that
    fails."""
    try:
        fd, name = tempfile.mkstemp(prefix=".align-write-check-", dir=directory)
    except OSError as error:
        message = f"{field}: {shown}: not writable ({_reason(error)})"
        raise OutputPathError(message, error.errno) from None
    try:
        os.write(fd, _PROBE_BYTES)
        os.fsync(fd)
    except OSError as error:
        message = f"{field}: {shown}: cannot write there ({_reason(error)})"
        raise OutputPathError(message, error.errno) from None
    finally:
        os.close(fd)
        os.unlink(name)


def _check_dir(directory: Path, field: str, shown: Path) -> None:
    existing = _nearest_existing(directory.absolute())
    if not existing.is_dir():
        where = "" if existing == shown.absolute() else f": {existing}"
        raise NotADirectoryError(f"{field}: {shown}{where} is a file, not a directory")
    _probe(existing, field, shown)


def check_output_dir(path: str | os.PathLike[str], field: str) -> Path:
    """``path`` as a Path when it is, or can be created as, a writable directory.

    Creates nothing: the nearest existing ancestor must be a directory that takes a probe
    write (one page, fsynced, removed). Raises NotADirectoryError (``path`` or an ancestor is
    a file) or :class:`OutputPathError` (read-only, full, no permission); every message starts
    with ``field`` and names ``path``.
    """
    p = Path(path)
    _check_dir(p, field, p)
    return p


def check_output_file(path: str | os.PathLike[str], field: str) -> Path:
    """``path`` as a Path when a file can be written there (its folder created if needed).

    Raises IsADirectoryError when ``path`` is an existing directory, else as
    :func:`check_output_dir` for its folder (the message names ``path`` itself).
    """
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{field}: {p} is a directory; expected a file path")
    _check_dir(p.parent, field, p)
    return p
