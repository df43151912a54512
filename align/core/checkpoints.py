"""Where a run's checkpoints are: ``<output_dir>/checkpoints/step-N`` (PPO and pretraining)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete ``checkpoints/step-N`` of a run directory by step (temporary ``.step-N.tmp``
    directories of an interrupted save are not checkpoints)."""
    found = (p for p in Path(output_dir, "checkpoints").glob("step-*") if p.name[5:].isdigit())
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(output_dir: str | Path) -> Path:
    """The highest complete ``checkpoints/step-N`` of a run directory."""
    found = checkpoints(output_dir)
    if not found:
        where = Path(output_dir) / "checkpoints"
        raise FileNotFoundError(f"{where}: no checkpoints to resume from")
    return found[-1]


def checkpoint_to_resume(
    output_dir: str | Path, resume_from: str | None, kind: str, marker: str
) -> Path | None:
    """The checkpoint ``resume_from`` names (``latest``, or a directory holding ``marker`` as a
    ``kind`` checkpoint does), or None for a fresh run. A fresh run into a directory that holds
    checkpoints is an error: a later ``resume_from: latest`` would mix the two runs."""
    if not resume_from:
        if checkpoints(output_dir):
            raise ValueError(
                f"output_dir: {output_dir} already holds checkpoints; pass "
                "--resume_from latest to continue that run, or use another output_dir"
            )
        return None
    if resume_from == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume_from)
    if not (path / marker).is_file():
        raise FileNotFoundError(
            f"resume_from: {path} is not a {kind} checkpoint directory (no {marker})"
        )
    return path


def prune_checkpoints(output_dir: str | Path, keep: int | None) -> list[Path]:
    """Delete all but the ``keep`` most recent checkpoints (``None`` keeps all); returns what
    was deleted."""
    if keep is None:
        return []
    old = checkpoints(output_dir)[:-keep]
    for path in old:
        shutil.rmtree(path)
    return old


@contextmanager
def atomic_checkpoint(accelerator, final: Path, keep: int | None = None) -> Iterator[Path]:
    """A temporary directory (with ``accelerate/`` made) that every process writes its part of a
    checkpoint into; after the block, once all have written, the main process renames it to
    ``final`` (replacing an older one), so a crash never leaves half a checkpoint, and then keeps
    only the ``keep`` most recent checkpoints (all with ``None``)."""
    tmp = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "accelerate").mkdir(parents=True)
    accelerator.wait_for_everyone()
    yield tmp
    accelerator.wait_for_everyone()  # every rank has written its shards before the rename
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune_checkpoints(final.parent.parent, keep)
    accelerator.wait_for_everyone()
