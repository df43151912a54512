"""``--num_processes`` / ``--accelerate_config`` for the training commands: re-run the same
command under ``accelerate launch`` (``ppo``, ``pei``, ``rm train``, ``sft``, ``pretrain``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer


def relaunch_if_asked(
    args: list[str], num_processes: int | None, config_file: str | Path | None
) -> None:
    """When either option is given (and this is not already a launched process), run
    ``align ARGS`` under ``accelerate launch`` and exit with its status."""
    if not (num_processes or config_file) or "WORLD_SIZE" in os.environ:
        return
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file:
        launch += ["--config_file", str(config_file)]
    if num_processes:
        launch += ["--num_processes", str(num_processes)]
    raise typer.Exit(subprocess.run([*launch, "-m", "align.cli", *args]).returncode)


def relaunch(invocation) -> None:
    """:func:`relaunch_if_asked` for a generated command's
    :class:`~align.cli.config_command.Invocation`."""
    extras = invocation.extras
    relaunch_if_asked(invocation.argv, extras.get("num_processes"), extras.get("accelerate_config"))
