"""Where a run's checkpoints are: ``<output_dir>/checkpoints/step-N`` (PPO and pretraining);
writing one whole or not at all; reading one back as data only.

**Loading only data.** A checkpoint's pickled files (``trainer_state.pt``, accelerate's
optimizer, scheduler and RNG states, DeepSpeed's shards) are read with
``torch.load(weights_only=True)``, which rebuilds tensors, numbers, strings and containers and
refuses anything else without running it. DeepSpeed reads its own shards with
``weights_only=False``, so :func:`verify_data_only` first opens every pickled file of the
checkpoint the safe way (memory-mapped, the tensors are not read); a crafted file is refused
with :class:`UnsafeCheckpointError` before anything else reads it.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate.utils.other import TORCH_SAFE_GLOBALS

from align.core.io import METRICS_FILE, earlier_run_error, replace_directory


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
    checkpoints or an earlier run's metrics is an error: the new run's lines would follow the old
    ones, and a later ``resume_from: latest`` would mix the two runs. The checkpoint to resume
    from is checked to hold only data (:func:`verify_data_only`)."""
    if not resume_from:
        if checkpoints(output_dir):
            raise ValueError(
                f"output_dir: {output_dir} already holds checkpoints; pass "
                "--resume_from latest to continue that run, or use another output_dir"
            )
        if error := earlier_run_error(Path(output_dir) / METRICS_FILE, resumable=False):
            raise ValueError(error)
        return None
    if resume_from == "latest":
        path = latest_checkpoint(output_dir)
    else:
        path = Path(resume_from)
        if not (path / marker).is_file():
            raise FileNotFoundError(
                f"resume_from: {path} is not a {kind} checkpoint directory (no {marker})"
            )
    verify_data_only(path)
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


def remove_unfinished_saves(output_dir: str | Path) -> list[Path]:
    """Delete the ``checkpoints/.step-N.tmp`` directories that saves killed midway left behind
    (they are never resumed from); returns them."""
    stale = sorted(Path(output_dir, "checkpoints").glob(".step-*.tmp"))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


@contextmanager
def atomic_checkpoint(accelerator, final: Path, keep: int | None = None) -> Iterator[Path]:
    """A temporary directory (with ``accelerate/`` made) that every process writes its part of a
    checkpoint into; after the block, once all have written, the main process renames it to
    ``final`` (replacing an older one), so a crash never leaves half a checkpoint, and then keeps
    only the ``keep`` most recent checkpoints (all with ``None``). Temporary directories of
    earlier saves that were killed are deleted first; when the block raises (a full disk, ...),
    the main process deletes this save's temporary directory and the error propagates."""
    tmp = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process:
        remove_unfinished_saves(final.parent.parent)
        (tmp / "accelerate").mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        yield tmp
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()  # every rank has written its shards before the rename
    if accelerator.is_main_process:
        replace_directory(tmp, final)
        prune_checkpoints(final.parent.parent, keep)
    accelerator.wait_for_everyone()


# --------------------------------------------------------------------------- loading only data


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds more than data (a pickled object that would run code)."""


_PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"}


def _pickled(path: Path) -> bool:
    """Whether ``torch.load`` could be pointed at ``path``: a torch zip archive, a pickle, or a
    file named like one (safetensors, JSON and text files are never unpickled)."""
    if path.suffix in {".safetensors", ".json", ".py", ".txt", ".md", ".yaml", ".jinja"}:
        return False
    with path.open("rb") as f:
        head = f.read(4)
    return path.suffix in _PICKLE_SUFFIXES or head == b"PK\x03\x04" or head[:1] == b"\x80"


def _safe_globals(directory: Path) -> list:
    """What besides plain data accelerate's and DeepSpeed's states need: numpy arrays (RNG
    states, as accelerate allows) and, in a DeepSpeed checkpoint, its loss scaler, ZeRO stage
    enum and fragment addresses (plain records, rebuilt without running their code)."""
    allowed = list(TORCH_SAFE_GLOBALS)
    if any(directory.rglob("*mp_rank_*")):
        # lazy: deepspeed is optional (only DeepSpeed checkpoints hold these)
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed += [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    return allowed


def _reason(err: Exception) -> str:
    """The informative part of torch's weights-only error (not its advice to load unsafely)."""
    skip = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith(skip)) or type(err).__name__


def load_data_only(path: Path, safe_globals: list | None = None, mmap: bool = False):
    """``torch.load(path, weights_only=True)`` on the CPU; a file holding anything but data is
    refused with :class:`UnsafeCheckpointError` (one line naming it), nothing in it run."""
    mmap = mmap and zipfile.is_zipfile(path)  # memory-mapping needs torch's zip format
    try:
        with torch.serialization.safe_globals(safe_globals or []):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # UnpicklingError, or a file torch cannot read at all
        raise UnsafeCheckpointError(
            f"{path}: refused to load: not plain checkpoint data ({_reason(err)}); resume only "
            "from checkpoints this program wrote"
        ) from None


def verify_data_only(directory: Path) -> None:
    """Open every pickled file under ``directory`` as data only (tensors memory-mapped, not
    read); the first that holds anything else raises :class:`UnsafeCheckpointError`."""
    allowed = None
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        if _pickled(path):
            allowed = _safe_globals(Path(directory)) if allowed is None else allowed
            load_data_only(path, allowed, mmap=True)


def restore_accelerate_state(accelerator, directory: Path) -> None:
    """``accelerator.load_state(directory)`` once every pickled file in it is verified to be
    data only (DeepSpeed reads its shards with ``weights_only=False``)."""
    verify_data_only(directory)
    accelerator.load_state(str(directory))
