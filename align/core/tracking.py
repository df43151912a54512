"""Experiment trackers for every long command: tensorboard, wandb and trackio through one
``report_to`` list, a ``project`` and a ``run_name`` (default: the output directory's name).

A command builds one :class:`Tracker` on its main process (:meth:`Tracker.start`), logs scalars
with a step (:meth:`Tracker.log`), a table of sample answers at each evaluation
(:meth:`Tracker.log_samples`: a markdown table in tensorboard, a ``wandb.Table``, a
``trackio.Table``) and closes it (:meth:`Tracker.finish`). With ``report_to`` empty every call
does nothing, so commands call it unconditionally. TRL-based commands (sft, rm train) let
transformers' own callbacks report; :func:`point_trainer_trackers` gives them the same project,
run name and tensorboard directory.

Layout under the output directory: ``tensorboard/`` (event files), ``wandb/`` (wandb's run
folders; ``WANDB_MODE=offline`` writes them without a network). Trackio keeps its own local
database (``TRACKIO_DIR``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from align.core.config import help_field

__all__ = [
    "TRACKERS",
    "Tracker",
    "check_report_to",
    "default_run_name",
    "finish_trainer_trackers",
    "point_trainer_trackers",
    "project_field",
    "report_to_field",
    "run_name_field",
    "samples_markdown",
]

#: Tracker name → the package it needs (its import name is the same).
TRACKERS: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}

#: The project runs are filed under unless ``project`` says otherwise.
DEFAULT_PROJECT = "align"

#: Rows of a table of sample answers (an evaluation may answer hundreds of prompts).
SAMPLE_ROWS = 64


# --------------------------------------------------------------------------- config fields


def report_to_field():
    """The ``report_to`` field every command's config declares."""
    return help_field(
        "Trackers to report to: tensorboard (<output>/tensorboard), wandb (<output>/wandb; "
        "WANDB_MODE=offline runs without a network), trackio; empty = none.",
        factory=list,
    )


def project_field():
    """The ``project`` field: the tracker project (wandb / trackio) runs are filed under."""
    return help_field("Tracker project (wandb, trackio) the run is filed under.", DEFAULT_PROJECT)


def run_name_field():
    """The ``run_name`` field: the run's name in the trackers."""
    return help_field("Run name in the trackers; none = the output directory's name.", None)


def check_report_to(
    report_to: str | Sequence[str] | None, field: str = "report_to", others: bool = False
) -> list[str]:
    """``report_to`` as a list of known tracker names whose packages are installed.

    ``none`` / empty → ``[]``. Raises ValueError naming ``field`` for an unknown tracker or a
    missing package (with the ``pip install`` line), so a command stops before it loads a model.
    ``others``: let names transformers knows and we do not (mlflow, ...) through unchecked.
    """
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [n for n in names if n != "none"]
    for name in names:
        if name not in TRACKERS:
            if others:
                continue
            raise ValueError(f"{field}: expected some of {', '.join(TRACKERS)}, got {name!r}")
        package = TRACKERS[name]
        if importlib.util.find_spec(package) is None:
            raise ValueError(
                f"{field}: {name} needs the {package} package, which is not installed: "
                f"pip install {package}"
            )
    return names


def default_run_name(run_name: str | None, output_dir: str | os.PathLike) -> str:
    """``run_name``, or the output directory's name when none is given."""
    return run_name or Path(output_dir).resolve().name


# --------------------------------------------------------------------------- sample tables


def _cell(value: Any) -> str:
    """One markdown table cell: pipes escaped, newlines as ``<br>``, floats to 4 places."""
    if isinstance(value, float):
        value = f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def samples_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """``rows`` (dicts with the same keys, e.g. prompt / answer / score) as a markdown table."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- backends


class _Backend(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None: ...
    def finish(self) -> None: ...


class _TensorBoard:
    """Scalars as scalars, tables and the config as markdown text summaries."""

    def __init__(self, logdir: Path, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # lazy: needs the optional tensorboard

        self.writer = SummaryWriter(log_dir=str(logdir))
        rows = [{"field": k, "value": v} for k, v in config.items()]
        self.writer.add_text("config", samples_markdown(rows), global_step=0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        self.writer.add_text(name, samples_markdown(rows), global_step=step)
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, out: Path, project: str, name: str, config: Mapping[str, Any]) -> None:
        import wandb  # lazy: optional tracker package

        self.wandb = wandb
        out.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project, name=name, dir=str(out), config=dict(config), reinit="create_new"
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        columns = list(rows[0])
        data = [[r.get(c) for c in columns] for r in rows]
        self.run.log({name: self.wandb.Table(columns=columns, data=data)}, step=step)

    def finish(self) -> None:
        self.run.finish()


class _Trackio:
    def __init__(self, project: str, name: str, config: Mapping[str, Any]) -> None:
        import trackio  # lazy: optional tracker package

        self.trackio = trackio
        self.run = trackio.init(project=project, name=name, config=dict(config))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        columns = list(rows[0])
        data = [[r.get(c) for c in columns] for r in rows]
        self.run.log({name: self.trackio.Table(columns=columns, data=data)}, step=step)

    def finish(self) -> None:
        self.run.finish()


# --------------------------------------------------------------------------- the tracker


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of ``metrics`` (bools and ints as floats); the step itself and
    strings are left out."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, str)
    }


def _plain_cell(value: Any) -> Any:
    """A table cell every tracker takes: numbers, text, bools and none as they are, a chat
    (``[{role, content}, ...]``) as ``role: content`` lines, anything else as its text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list) and all(isinstance(m, Mapping) and "content" in m for m in value):
        return "\n".join(f"{m.get('role', '')}: {m['content']}" for m in value)
    return str(value)


def _plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config values trackers can show: numbers, strings, bools, none; others as text."""
    plain = (int, float, str, bool, type(None))
    return {k: v if isinstance(v, plain) else str(v) for k, v in config.items()}


class Tracker:
    """The trackers of one run; with no backends every method does nothing."""

    def __init__(self, backends: Sequence[_Backend] = ()) -> None:
        self.backends = list(backends)

    @classmethod
    def start(
        cls,
        report_to: Sequence[str],
        output_dir: str | os.PathLike,
        project: str = DEFAULT_PROJECT,
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Tracker:
        """Open every tracker of ``report_to`` (checked again here) for a run writing to
        ``output_dir``; call on the main process only."""
        names = check_report_to(report_to)
        out, name = Path(output_dir), default_run_name(run_name, output_dir)
        plain = _plain_config(config or {})
        makers = {
            "tensorboard": lambda: _TensorBoard(out / "tensorboard", plain),
            "wandb": lambda: _WandB(out, project, name, plain),
            "trackio": lambda: _Trackio(project, name, plain),
        }
        return cls([makers[n]() for n in names])

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """The numeric entries of ``metrics`` at ``step`` (NaN included: a tracker shows gaps)."""
        scalars = _scalars(metrics)
        if not scalars:
            return
        for backend in self.backends:
            backend.log(scalars, step)

    def log_samples(
        self, rows: Sequence[Mapping[str, Any]], step: int, name: str = "samples"
    ) -> None:
        """A table of sample answers (one dict per row, same keys: prompt, answer, score, ...);
        the first :data:`SAMPLE_ROWS` rows."""
        if not rows or not self.backends:
            return
        plain = [{k: _plain_cell(v) for k, v in r.items()} for r in rows[:SAMPLE_ROWS]]
        for backend in self.backends:
            backend.table(name, plain, step)

    def finish(self) -> None:
        for backend in self.backends:
            backend.finish()
        self.backends = []


# --------------------------------------------------------------------------- TRL commands


def point_trainer_trackers(args: Any, wandb_root: str | os.PathLike | None = None) -> None:
    """For a transformers ``TrainingArguments`` (sft, rm train): check ``report_to`` before
    anything loads, default ``run_name`` to the output directory's name, and send wandb to
    ``project`` (runs under ``<wandb_root or output_dir>/wandb``) and tensorboard to
    ``<output_dir>/tensorboard`` as the other commands do. transformers reads both from the
    environment when its callbacks start; wandb reads ``WANDB_DIR`` once per process, so a
    command training several stages passes its own directory as ``wandb_root``."""
    args.report_to = check_report_to(args.report_to, others=True)
    args.run_name = default_run_name(args.run_name, args.output_dir)
    if "wandb" in args.report_to:
        os.environ["WANDB_PROJECT"] = args.project
        os.environ["WANDB_DIR"] = str(Path(wandb_root or args.output_dir))
    if "tensorboard" in args.report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(args.output_dir) / "tensorboard")


def finish_trainer_trackers(args: Any) -> None:
    """After a transformers Trainer's last log: finish the wandb run its callback opened. The
    callback never finishes it, so the next trainer of the process (rm train's second stage)
    would log into it under the first one's name."""
    wandb = sys.modules.get("wandb")  # imported by the callback when wandb was reported to
    if "wandb" in (args.report_to or []) and wandb is not None and wandb.run is not None:
        wandb.run.finish()
