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


@contextmanager
def atomic_checkpoint(accelerator, final: Path) -> Iterator[Path]:
    """A temporary directory (with ``accelerate/`` made) that every process writes its part of a
    checkpoint into; after the block, once all have written, the main process renames it to
    ``final`` (replacing an older one), so a crash never leaves half a checkpoint."""
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
    accelerator.wait_for_everyone()
