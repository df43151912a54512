"""``align sft`` and ``align pretrain``: the SFT and continued-pretraining recipes
(``recipes/sft.py``, ``recipes/pretrain.py``) as commands, with the same config classes."""

from __future__ import annotations

from align.cli.common import console
from align.cli.config_command import LAUNCH_EXTRAS, Invocation, config_command
from align.cli.launch import relaunch


def _sft_config() -> type:
    from align.sft.run import SFTRecipeConfig  # lazy: loads trl/peft; keeps 'align --help' fast

    return SFTRecipeConfig


def _pretrain_config() -> type:
    from align.pretrain.run import PretrainConfig  # lazy: loads torch; keeps 'align --help' fast

    return PretrainConfig


def run_sft_command(cfg, invocation: Invocation) -> None:
    """Re-launch if asked, train, print the held-out loss before and after."""
    from align.sft.run import run  # lazy: as in _sft_config

    relaunch(invocation)
    summary = run(cfg)
    before, after = summary["held_out_before"]["loss"], summary["held_out_after"]["loss"]
    console.print(
        f"held-out loss {before:.4f} -> {after:.4f}; final model: {summary['final']}",
        markup=False,
        soft_wrap=True,
    )


def run_pretrain_command(cfg, invocation: Invocation) -> None:
    """Re-launch if asked, train every stage, print the held-out loss before and after."""
    from align.pretrain.run import run  # lazy: as in _pretrain_config

    relaunch(invocation)
    summary = run(cfg)
    before, after = summary["held_out_before"]["all"], summary["held_out_after"]["all"]
    console.print(
        f"held-out loss {before:.4f} -> {after:.4f} in {summary['steps']} steps; "
        f"final model: {summary['final']}",
        markup=False,
        soft_wrap=True,
    )


sft_command = config_command(
    "sft",
    _sft_config,
    run_sft_command,
    help="Answer-only SFT with per-category loss and a dynamic data mix (TRL SFTTrainer; "
    "recipes/sft.py). Every SFTRecipeConfig field is an option, TRL's included.",
    extras=LAUNCH_EXTRAS,
)
pretrain_command = config_command(
    "pretrain",
    _pretrain_config,
    run_pretrain_command,
    help="Continued pretraining on bucketed documents with the dynamic mixture per stage "
    "(recipes/pretrain.py). Every PretrainConfig field is an option.",
    extras=LAUNCH_EXTRAS,
)
