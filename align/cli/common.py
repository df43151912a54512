"""What every ``align`` command shares: the consoles, the progress bar, the user-error types."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

#: Exceptions that mean "the user gave something wrong": one line on stderr, exit status 2.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)


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
