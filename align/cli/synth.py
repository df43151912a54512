"""``align data synth``: ensemble answer synthesis (:mod:`align.synth.run`).

Generated from :class:`align.synth.run.SynthConfig` and added to the ``data`` group by
``align/cli/app.py``.
"""

from __future__ import annotations

from align.cli.common import console, progress_bar
from align.cli.config_command import Invocation, config_command


def _config_class() -> type:
    from align.synth.run import SynthConfig  # lazy: loads torch; keeps 'align --help' fast

    return SynthConfig


def run_synth_command(cfg, invocation: Invocation) -> None:
    """Answer, score, keep the top k per prompt; print the counts and where the outputs are."""
    from align.synth.run import check_inputs, load_prompts, run_synth  # lazy: as above

    check_inputs(cfg)  # a missing input or an empty prompt file: one line, before any model loads
    load_prompts(cfg)
    with progress_bar() as bar:
        task = bar.add_task("synth", total=None, info="")
        report = run_synth(cfg, progress=lambda d, n: bar.update(task, completed=d, total=n))
    t = report["total"]
    console.print(
        f"{t['prompts']} prompts, {t['generated']} answers: {t['kept']} kept, "
        f"{t['below_floor']} below the floor, {t['invalid']} unscored, {t['beyond_k']} beyond k",
        markup=False,
    )
    console.print(f"SFT records: {cfg.out}/sft.jsonl\nreport: {cfg.out}/report.json",
                  markup=False, soft_wrap=True)  # fmt: skip


synth_command = config_command(
    "synth",
    _config_class,
    run_synth_command,
    help="Ensemble answer synthesis: several policies answer each prompt n times, the reward "
    "sources score every answer, the top k per prompt at or above min_score become SFT records "
    "with provenance (model, score, rank). Resumable: rerun the same command after a kill. "
    "E.g. --prompts p.jsonl --policies A B --rewards tiny --out synth/.",
    path=["data", "synth"],
)
