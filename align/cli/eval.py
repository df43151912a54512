"""``align eval ...``: GSB win rates of a policy against a baseline, and MCQ exam benchmarks.

Wiring (in ``align/cli/app.py``): ``app.add_typer(eval_app, name="eval")``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer

eval_app = typer.Typer(
    help="Evaluate policies: GSB win rates per sub-domain, MCQ benchmarks (FinanceIQ layout).",
    no_args_is_help=True,
)


@contextmanager
def _progress(description: str, total: int):
    """A rich progress bar; yields ``advance(k)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(),
    ) as bar:  # fmt: skip
        task = bar.add_task(description, total=total)
        yield lambda k: bar.advance(task, k)


def _read_rewards(path: Path | None, reward_model: Path | None) -> list[dict] | None:
    """Reward specs from a YAML file (a list, or a mapping with a ``rewards:`` list)."""
    if path is not None and reward_model is not None:
        raise typer.BadParameter("give --rewards or --reward-model, not both")
    if reward_model is not None:
        return [{"type": "model", "path": str(reward_model)}]
    if path is None:
        return None
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such rewards file")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    specs = data.get("rewards") if isinstance(data, dict) else data
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise ValueError(
            f"{path}: expected a list of reward entries ({{type: ..., ...}}) or a mapping "
            "with a 'rewards:' list"
        )
    return specs


@eval_app.command("gsb")
def eval_gsb(
    candidate: Path = typer.Option(..., help="Candidate policy directory (HF format)."),
    baseline: Path | None = typer.Option(None, help="Baseline policy; default: tiny SFT policy."),
    prompts: Path | None = typer.Option(
        None, help="Held-out prompt records with categories; default: tiny world eval prompts."
    ),
    judge: str = typer.Option("reward", help="reward or llm."),
    rewards: Path | None = typer.Option(
        None, help="YAML list of reward entries (as PPO's rewards:); default: tiny world rule."
    ),
    reward_model: Path | None = typer.Option(None, help="Shortcut: one reward model directory."),
    margin: float = typer.Option(0.0, help="Reward judge: |difference| <= margin is 'same'."),
    llm_base_url: str = typer.Option("", help="LLM judge: e.g. http://127.0.0.1:8000/v1."),
    llm_model: str = typer.Option("", help="LLM judge: model name."),
    api_key_env: str | None = typer.Option(None, help="LLM judge: env variable with the key."),
    max_new_tokens: int = typer.Option(128, help="Answer length cap."),
    temperature: float = typer.Option(0.0, help="Sampling temperature (0 = greedy)."),
    batch_size: int = typer.Option(32, help="Prompts per generate call."),
    limit: int | None = typer.Option(None, help="First N prompts of each category only."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples."),
    seed: int = typer.Option(0, help="Seed of sampling and bootstrap."),
    out: Path = typer.Option(Path("runs/eval-gsb"), help="Run directory for the report."),
) -> None:
    """Good / same / bad of a candidate policy against a baseline, per sub-domain."""
    from rich.console import Console

    from eval.gsb_run import GSBConfig, load_prompt_records, run_gsb

    specs = _read_rewards(rewards, reward_model)
    if baseline is None or prompts is None:
        world = _tiny_world()
        baseline = baseline or world.policy
        prompts = prompts or world.data("eval_prompts")
    cfg = GSBConfig(
        candidate=str(candidate), baseline=str(baseline), prompts=str(prompts), judge=judge,
        margin=margin,
        llm_base_url=llm_base_url, llm_model=llm_model, api_key_env=api_key_env,
        max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
        limit=limit, n_boot=n_boot, seed=seed, out=str(out),
        **({"rewards": specs} if specs is not None else {}),
    )  # fmt: skip
    total = 2 * len(load_prompt_records(cfg))
    with _progress("answers", total) as advance:
        result = run_gsb(cfg, on_batch=advance)
    console = Console()
    console.print(result.report.to_markdown(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"report: {out / 'report.md'}", markup=False, soft_wrap=True)


@eval_app.command("mcq")
def eval_mcq(
    data: Path = typer.Option(..., help="Benchmark folder: <split>/*.csv and dev/*.csv."),
    shots: int = typer.Option(0, help="Worked dev examples per prompt: 0 or 5 (FinanceIQ)."),
    split: str = typer.Option("test", help="Question folder under --data (test, dev, ...)."),
    policy: Path | None = typer.Option(None, help="Policy directory; default: tiny SFT policy."),
    scoring: str = typer.Option("generate", help="generate, loglik or both."),
    prompt_format: str = typer.Option("auto", help="chat, raw or auto."),
    max_new_tokens: int = typer.Option(32, help="Answer length cap (generate)."),
    max_length: int = typer.Option(2048, help="Prompt token budget (shots dropped past it)."),
    batch_size: int = typer.Option(16, help="Prompts per call."),
    limit: int | None = typer.Option(None, help="First N questions of each category only."),
    out: Path = typer.Option(Path("runs/eval-mcq"), help="Run directory for the report."),
) -> None:
    """Exam accuracy per category, macro and micro averages (FinanceIQ / CMMLU / C-Eval CSVs)."""
    from rich.console import Console

    from eval.gsb_run import load_policy
    from eval.mcq_run import MCQConfig, build_prompts, evaluate_mcq
    from eval.report import mcq_section, write_report

    if not data.is_dir():
        raise typer.BadParameter(f"{data}: no such benchmark folder", param_hint="--data")
    cfg = MCQConfig(
        data=str(data), split=split, shots=shots, scoring=scoring, prompt_format=prompt_format,
        max_new_tokens=max_new_tokens, max_length=max_length, batch_size=batch_size, limit=limit,
    )  # fmt: skip
    total = len(build_prompts(cfg).items) * (2 if scoring == "both" else 1)  # checks the data
    policy_dir = policy or _tiny_world().policy
    model, tokenizer = load_policy(str(policy_dir))
    with _progress("questions", total) as advance:
        results = evaluate_mcq(model, tokenizer, cfg, on_batch=advance)
    setup = {"policy": str(policy_dir), "data": str(data), "split": split, "shots": shots}
    section = mcq_section(results, out, extra=setup)
    write_report(out, [section], title=f"MCQ: {data.name}/{split}, {shots}-shot")
    console = Console()
    for name, result in results.items():
        console.print(result.to_markdown(f"scoring: {name}"), markup=False, highlight=False)
    console.print(f"report: {out / 'report.md'}", markup=False, soft_wrap=True)


def _tiny_world():
    """The tiny world (built on first use, then cached): the default models and prompts."""
    from align.tiny.build import build_tiny_world

    world, _ = build_tiny_world(None)
    return world
