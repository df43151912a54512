"""What every ``align`` command shares: the consoles, the progress bar, the user-error types."""

from __future__ import annotations

import errno

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from align.core.outputs import OutputPathError

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

#: Exceptions that mean "the user gave something wrong": one line on stderr, exit status 2.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    OutputPathError,
)
#: ``errno`` values of an OSError that mean the output location cannot take the run's files
#: (read-only, full, over quota, file too large): also one line and exit status 2.
WRITE_ERRNOS = frozenset(
    code
    for code in (errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG)
    if code is not None
)


def progress_bar(enabled: bool = True):
    """The rich progress bar of every long ``align`` command (off on non-main processes)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not enabled,
    )
