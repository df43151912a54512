"""align.core.quiet: which notices are hidden, how --verbose is read, and that it all undoes."""

from __future__ import annotations

import logging
import warnings

import pytest

from align.core import quiet

TRITON = "Triton is installed, but doesn't include CPU backend. Disabling Triton."
DEEPSPEED = "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable ..."
PIN_MEMORY = (
    "'pin_memory' argument is set as true but no accelerator is found, then device pinned "
    "memory won't be used."
)
QUIET_ENV = ("VLLM_LOGGING_LEVEL", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")


def removed(*names: str) -> str:
    """accelerate's message, as ``clean_state_dict_for_safetensors`` words it."""
    return (
        f"[RANK 0] Removed shared tensor {set(names)} while saving. This should be OK, but check "
        "by verifying that you don't receive any warning while reloading"
    )


class Records(logging.Handler):
    """Collects the messages that reach it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def clean(monkeypatch):
    """No quiet settings before the test; whatever it applied is undone after."""
    for name in (*QUIET_ENV, quiet.VERBOSE_ENV):
        monkeypatch.delenv(name, raising=False)
    quiet.apply_quiet(verbose=True)  # undo anything an earlier caller applied
    monkeypatch.delenv(quiet.VERBOSE_ENV)
    yield
    quiet.apply_quiet(verbose=True)


@pytest.fixture
def triton_logger():
    logger, records = logging.getLogger("vllm.triton_utils.importing"), Records()
    # vLLM's logging set-up (after an in-process vLLM engine ran earlier in the session) may have
    # disabled or raised the level of existing loggers: this test is about our filter alone.
    disabled, level, manager = logger.disabled, logger.level, logging.root.manager.disable
    logger.disabled, logger.level, logging.root.manager.disable = False, logging.DEBUG, 0
    logger.addHandler(records)
    yield logger, records
    logger.removeHandler(records)
    logger.disabled, logger.level, logging.root.manager.disable = disabled, level, manager


@pytest.mark.parametrize(
    ("args", "env", "verbose"),
    [
        (["--verbose", "ppo", "--config", "tiny"], None, True),
        (["--version", "--verbose"], None, True),
        (["ppo", "--verbose"], None, False),  # after the command name it is the command's
        (["data", "validate", "x.jsonl"], None, False),
        ([], "1", True),
        (["ppo"], "true", True),
        (["ppo"], "0", False),
        (["ppo"], "", False),
    ],
)
def test_verbose_requested(monkeypatch, args, env, verbose):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    if env is not None:
        monkeypatch.setenv(quiet.VERBOSE_ENV, env)
    assert quiet.verbose_requested(args) is verbose


@pytest.mark.parametrize(
    ("message", "hidden"),
    [
        (removed("actor.lm_head.weight"), True),
        (removed("lm_head.weight"), True),
        (removed("module.actor.lm_head.weight", "module.critic.lm_head.weight"), True),
        (removed("actor.lm_head.weight", "critic.score.weight"), False),  # not only tied heads
        (removed("model.embed_tokens.weight"), False),
        ("Removed shared tensor while saving", False),  # no names: cannot tell, so it shows
    ],
)
def test_only_tied_lm_heads_count_as_harmless(message, hidden):
    assert quiet._tied_embeddings_only(message) is hidden


def test_deepspeed_notice_hidden_only_with_cpu_torch():
    import torch

    assert torch.version.cuda is None and torch.version.hip is None  # this machine's CPU build
    assert quiet._cpu_only_torch(DEEPSPEED)


def test_known_notice_hidden_and_other_warnings_kept(clean, triton_logger):
    logger, records = triton_logger
    assert quiet.apply_quiet(verbose=False) is False
    logger.warning(TRITON)
    logger.warning("a different vLLM warning")
    logging.getLogger("vllm.triton_utils.importing.child").warning(TRITON)  # not this logger
    assert records.messages == ["a different vLLM warning", TRITON]
    assert quiet.hidden_count() == 1

    assert quiet.apply_quiet(verbose=True) is True
    logger.warning(TRITON)
    assert records.messages[-1] == TRITON and quiet.hidden_count() == 0


def test_apply_twice_hides_once(clean, triton_logger):
    logger, _ = triton_logger
    quiet.apply_quiet(verbose=False)
    quiet.apply_quiet(verbose=False)
    assert sum(isinstance(f, quiet._HideNotices) for f in logger.filters) == 1


def test_environment_set_where_unset_and_restored(clean, monkeypatch):
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")  # the user's choice wins
    quiet.apply_quiet(verbose=False)
    import os

    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["TQDM_DISABLE"] == "1"  # pytest captures stderr: not a terminal
    quiet.apply_quiet(verbose=True)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ
    assert "TQDM_DISABLE" not in os.environ
    assert os.environ[quiet.VERBOSE_ENV] == "1"  # for child processes


def test_terminal_keeps_tqdm_bars():
    assert "TQDM_DISABLE" not in quiet.env_defaults(stderr_is_terminal=True)
    assert quiet.env_defaults(stderr_is_terminal=False)["TQDM_DISABLE"] == "1"


def test_pin_memory_warning_hidden_others_shown(clean):
    quiet.apply_quiet(verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn(PIN_MEMORY, UserWarning, stacklevel=1)
        warnings.warn("something the user should read", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something the user should read"]

    quiet.apply_quiet(verbose=True)
    with warnings.catch_warnings(record=True) as caught:  # no "always": the filter is gone
        warnings.warn(PIN_MEMORY, UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [PIN_MEMORY]
