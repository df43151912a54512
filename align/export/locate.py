"""What ``align export`` exports: the model directory that a run, a checkpoint or a model path
stands for, and the settings of its run that travel with it (chat format, sampling).

A path is read by its layout, the first match winning, and followed until a model directory
(``config.json``, or a LoRA adapter's ``adapter_config.json``) is reached:

==========================  ==============================================  ====================
the path holds              it is                                            followed to
==========================  ==============================================  ====================
``config.json``             a model (or LoRA adapter) directory             itself
``actor/``                  a PPO checkpoint (``checkpoints/step-N``)       ``actor/``
``model/``                  a pretraining checkpoint                        ``model/``
``final/``                  a finished SFT or pretraining run               ``final/``
``stage2/``, ``stage1/``    a UFRM run (``align rm train``)                 its last stage
``checkpoints/step-N/``     a PPO or pretraining run                        the highest step
``checkpoint-N/``           a Trainer's checkpoints (SFT)                   the highest N
``round-K/ppo/``            a PEI run                                       the last round's PPO
==========================  ==============================================  ====================

The run's settings come from the nearest ``config.yaml`` above the model directory that sits in
a run directory (beside ``metrics.jsonl`` or ``summary.json``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from align.core.checkpoints import checkpoints
from align.core.config import parse_yaml
from align.core.models import CONFIG_FILES, check_model_dir

#: The argument the path came from, as error messages name it.
FIELD = "RUN"
#: Sampling settings of a run's config that become the export's generation defaults.
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_new_tokens")
#: How many layouts a path may be followed through (PEI run → round → checkpoint → actor).
MAX_DEPTH = 6


@dataclass(frozen=True)
class Source:
    """What to export: ``model_dir`` (a model or LoRA adapter directory) and ``run_config``,
    the ``config.yaml`` of the run it comes from ({} when none was found)."""

    model_dir: Path
    run_config: dict = field(default_factory=dict)
    run_config_path: Path | None = None

    @property
    def is_adapter(self) -> bool:
        """A LoRA (PEFT) adapter directory, to be merged into its base model."""
        return (self.model_dir / "adapter_config.json").is_file()

    @property
    def chat_format(self) -> str | None:
        """The run's ``chat_format`` (a PEI run's under ``ppo:``); None when unknown."""
        for settings in (self.run_config, self.run_config.get("ppo")):
            if isinstance(settings, dict) and isinstance(settings.get("chat_format"), str):
                return settings["chat_format"]
        return None

    @property
    def sampling(self) -> dict:
        """The run's sampling settings (PPO's ``temperature``, ``top_p``, ``top_k``,
        ``max_new_tokens``) that it names; {} for runs that do not sample."""
        return {
            name: self.run_config[name]
            for name in SAMPLING_FIELDS
            if isinstance(self.run_config.get(name), (int, float))
            and not isinstance(self.run_config.get(name), bool)
        }


# --------------------------------------------------------------------------- layouts


def _numbered(parent: Path, prefix: str) -> list[Path]:
    """The ``<prefix>N`` directories of ``parent`` by N."""
    found = [p for p in parent.glob(f"{prefix}*") if p.is_dir() and p.name[len(prefix) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(prefix) :]))


def _child(name: str) -> Callable[[Path], Path | None]:
    return lambda path: path / name if (path / name).is_dir() else None


def _last_ufrm_stage(path: Path) -> Path | None:
    stages = [path / name for name in ("stage2", "stage1") if (path / name).is_dir()]
    return stages[0] if stages else None


def _latest_step(path: Path) -> Path | None:
    found = checkpoints(path)
    return found[-1] if found else None


def _latest_trainer_checkpoint(path: Path) -> Path | None:
    found = _numbered(path, "checkpoint-")
    return found[-1] if found else None


def _latest_pei_round(path: Path) -> Path | None:
    rounds = [r / "ppo" for r in _numbered(path, "round-") if checkpoints(r / "ppo")]
    return rounds[-1] if rounds else None


#: Layouts in the order they are tried: what the path holds → where to follow it.
LAYOUTS: dict[str, Callable[[Path], Path | None]] = {
    "actor/": _child("actor"),
    "model/": _child("model"),
    "final/": _child("final"),
    "stage1/": _last_ufrm_stage,
    "checkpoints/step-N/": _latest_step,
    "checkpoint-N/": _latest_trainer_checkpoint,
    "round-K/ppo/": _latest_pei_round,
}


def _is_model_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in CONFIG_FILES)


def model_dir_of(path: str | Path) -> Path:
    """The model directory ``path`` stands for (see the module docstring), checked to hold
    safetensors weights. One-line errors naming the path: FileNotFoundError (no such path),
    NotADirectoryError (a file), ValueError (no layout matches; pickle weights only)."""
    start = Path(path)
    if not start.exists():
        raise FileNotFoundError(f"{FIELD}: {start}: no such run, checkpoint or model directory")
    if not start.is_dir():
        raise NotADirectoryError(f"{FIELD}: {start}: expected a run or checkpoint directory")
    current = start
    for _ in range(MAX_DEPTH):
        if _is_model_dir(current):
            return check_model_dir(current, FIELD)
        followed = next((p for p in (find(current) for find in LAYOUTS.values()) if p), None)
        if followed is None:
            break
        current = followed
    raise ValueError(
        f"{FIELD}: {current}: not a run, checkpoint or model directory (expected one of: "
        f"config.json, {', '.join(LAYOUTS)})"
    )


def run_config_of(model_dir: Path) -> tuple[dict, Path | None]:
    """The ``config.yaml`` of the run ``model_dir`` belongs to, parsed, and its path: the
    nearest one above it in a run directory (beside ``metrics.jsonl`` or ``summary.json``, so
    an unrelated ``config.yaml`` in a parent folder is not mistaken for one); ({}, None) when
    there is none."""
    for parent in list(model_dir.resolve().parents)[:MAX_DEPTH]:
        path = parent / "config.yaml"
        is_run = any((parent / name).is_file() for name in ("metrics.jsonl", "summary.json"))
        if path.is_file() and is_run:
            loaded = parse_yaml(path.read_text(encoding="utf-8"), str(path))
            return (loaded if isinstance(loaded, dict) else {}), path
    return {}, None


def locate(path: str | Path) -> Source:
    """What exporting ``path`` means: its model directory and its run's settings."""
    model_dir = model_dir_of(path)
    config, config_path = run_config_of(model_dir)
    return Source(model_dir, config, config_path)
