"""Where a run's checkpoints are: ``<output_dir>/checkpoints/step-N`` (PPO and pretraining)."""

from __future__ import annotations

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
