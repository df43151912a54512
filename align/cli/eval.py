"""``align eval ...``: GSB win rates of a policy against a baseline, and MCQ exam benchmarks.

Wiring (in ``align/cli/app.py``): ``app.add_typer(eval_app, name="eval")`` and the generated
``gsb`` / ``mcq`` commands added to it.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from align.cli.config_command import Invocation, config_command
from align.core.models import check_model_dir
from align.core.outputs import check_output_dir

#: The value of ``--baseline`` / ``--prompts`` of ``align eval gsb`` that asks for the tiny
#: world's SFT policy / held-out prompts (nothing is filled in unasked: the candidate is a model).
TINY = "tiny"

eval_app = typer.Typer(
    help="Evaluate policies: GSB win rates per sub-domain, MCQ benchmarks (FinanceIQ layout).",
    no_args_is_help=True,
)


@contextmanager
def _progress(description: str, total: int):
    """A rich progress bar; yields ``advance(k)``."""
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(),
    ) as bar:  # fmt: skip
        task = bar.add_task(description, total=total)
        yield lambda k: bar.advance(task, k)


def _gsb_config() -> type:
    from eval.gsb_run import GSBConfig  # lazy: loads torch/transformers; keeps 'align --help' fast

    return GSBConfig


def _mcq_config() -> type:
    from eval.mcq_run import MCQConfig  # lazy: loads torch; keeps 'align --help' fast

    return MCQConfig


def run_eval_gsb(cfg, invocation: Invocation) -> None:
    """Good / same / bad of a candidate policy against a baseline, per sub-domain."""
    from eval.gsb_run import check_inputs, load_prompt_records, run_gsb  # lazy: as in _gsb_config

    # before the tiny world is built; 'tiny' asks for the tiny world's baseline / prompts
    check_inputs(cfg)
    baseline = None if cfg.baseline == TINY else cfg.baseline
    _check_paths(Path(cfg.out), candidate=cfg.candidate, baseline=baseline)
    if TINY in (cfg.baseline, cfg.prompts):
        world = _tiny_world()
        cfg = dataclasses.replace(
            cfg,
            baseline=baseline or str(world.policy),
            prompts=str(world.data("eval_prompts")) if cfg.prompts == TINY else cfg.prompts,
        )
    total = 2 * len(load_prompt_records(cfg))
    with _progress("answers", total) as advance:
        result = run_gsb(cfg, on_batch=advance)
    console = Console()
    console.print(result.report.to_markdown(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"report: {Path(cfg.out) / 'report.md'}", markup=False, soft_wrap=True)


def run_eval_mcq(cfg, invocation: Invocation) -> None:
    """Exam accuracy per category, macro and micro averages (FinanceIQ / CMMLU / C-Eval CSVs)."""
    # lazy: these load torch/transformers/matplotlib, kept off 'align --help'
    from eval.gsb_run import load_policy
    from eval.mcq_run import build_prompts, evaluate_mcq, report_to_trackers
    from eval.report import mcq_section, write_report

    data, out = Path(cfg.data), Path(cfg.out)
    if not data.is_dir():
        raise FileNotFoundError(f"data: {data}: no such benchmark folder")
    _check_paths(out, policy=cfg.policy)
    total = len(build_prompts(cfg).items) * (2 if cfg.scoring == "both" else 1)  # checks the data
    policy_dir = cfg.policy or _tiny_world().policy
    model, tokenizer = load_policy(str(policy_dir), "policy", cfg.dtype, cfg.attn_implementation)
    with _progress("questions", total) as advance:
        results = evaluate_mcq(model, tokenizer, cfg, on_batch=advance)
    setup = {"policy": str(policy_dir), "data": str(data), "split": cfg.split, "shots": cfg.shots}
    section = mcq_section(results, out, extra=setup)
    write_report(out, [section], title=f"MCQ: {data.name}/{cfg.split}, {cfg.shots}-shot")
    report_to_trackers(cfg, results)
    console = Console()
    for name, result in results.items():
        console.print(result.to_markdown(f"scoring: {name}"), markup=False, highlight=False)
    console.print(f"report: {out / 'report.md'}", markup=False, soft_wrap=True)


gsb_command = config_command(
    "gsb",
    _gsb_config,
    run_eval_gsb,
    help="Good / same / bad of a candidate policy against a baseline, per sub-domain. Every "
    "GSBConfig field is an option.",
    path=["eval", "gsb"],
)
mcq_command = config_command(
    "mcq",
    _mcq_config,
    run_eval_mcq,
    help="Exam accuracy per category, macro and micro averages (FinanceIQ / CMMLU / C-Eval "
    "CSVs). Every MCQConfig field is an option.",
    path=["eval", "mcq"],
)


def _check_paths(out: Path, **models: str | Path | None) -> None:
    """The run directory takes writes and every given model is a safetensors model directory;
    one line naming the option otherwise (checked before any model or the tiny world loads)."""
    check_output_dir(out, "out")
    for name, path in models.items():
        if path is not None:
            check_model_dir(path, name)


def _tiny_world():
    """The tiny world (built on first use, then cached): the default models and prompts."""
    from align.tiny.build import build_tiny_world  # lazy: loads datasets; keeps 'align --help' fast

    world, _ = build_tiny_world(None)
    return world
