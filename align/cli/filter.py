"""``align filter``: confidence-interval filtering of prompts (METHODS §3).

Registered in ``align/cli/app.py`` with ``app.command("filter")(filter_command)``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import typer
import yaml

RULE_NAMES = ("tiny", "mcq")


def parse_reward(value: str) -> list[dict]:
    """One ``--reward`` value → reward config entries (as ``PPOConfig.rewards``).

    Spellings: a YAML mapping or list of mappings (``'{type: model, path: rm/}'``); ``tiny`` or
    ``mcq`` (rules); ``rule:NAME``; an ``http(s)://`` URL (remote reward model); an existing
    directory (local reward model); ``pkg.module:function`` or ``file.py:function`` (Python).
    """
    text = value.strip()
    if text.startswith(("{", "[")):
        loaded = yaml.safe_load(text)
        specs = loaded if isinstance(loaded, list) else [loaded]
        if not all(isinstance(s, dict) for s in specs):
            raise typer.BadParameter(f"--reward {value!r}: expected a mapping or a list of them")
        return specs
    if text in RULE_NAMES or text.startswith("rule:"):
        return [{"type": "rule", "rule": text.removeprefix("rule:")}]
    if text.startswith(("http://", "https://")):
        return [{"type": "http", "url": text}]
    if Path(text).is_dir():
        return [{"type": "model", "path": text}]
    if ":" in text:
        return [{"type": "python", "fn": text}]
    raise typer.BadParameter(
        f"--reward {value!r}: expected a reward model directory, an http(s) URL, "
        "'module:function', 'file.py:function', tiny, mcq, rule:NAME or a YAML mapping"
    )


def parse_mapping(value: str | None, option: str) -> dict:
    """A YAML mapping (``'{dtype: bfloat16}'``) → dict; none → {}."""
    if value is None:
        return {}
    loaded = yaml.safe_load(value)
    if not isinstance(loaded, dict):
        raise typer.BadParameter(f"{option} {value!r}: expected a YAML mapping {{key: value}}")
    return loaded


def parse_pair(value: str | None, option: str) -> tuple[float, float] | None:
    """``"lo,hi"`` → ``(lo, hi)``."""
    if value is None:
        return None
    parts = value.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise typer.BadParameter(f"{option} {value!r}: expected two numbers 'lo,hi'") from None
    if lo > hi:
        raise typer.BadParameter(f"{option} {value!r}: expected lo <= hi")
    return lo, hi


def _print_result(result, console) -> None:
    from rich.table import Table

    from align.filter.selection import STEPS

    table = Table(title=f"{len(result.kept)} of {result.n_prompts} prompts kept")
    for column in ("category", *STEPS, "kept share"):
        table.add_column(column, justify="left" if column == "category" else "right")
    share = result.kept_share
    for c in result.counts["input"]:
        table.add_row(c, *(str(result.counts[s][c]) for s in STEPS), f"{share[c]:.1%}")
    console.print(table)
    t = result.timing
    console.print(
        f"sampled {result.generated} prompts ({result.cached} from the cache) in "
        f"{t['total_s']:.1f} s: {t['prompts_per_s']:.2f} prompts/s",
        markup=False,
    )
    console.print(
        f"kept prompts: {result.out}\nreport: {result.report_dir / 'report.md'}",
        markup=False,
        soft_wrap=True,
    )


def _run(cfg, console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from align.filter.run import run_filter

    with Progress(
        TextColumn("[bold]sample & score"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("filter", total=None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run_filter(cfg, progress=lambda d, n: bar.update(task, completed=d, total=n))
    for w in caught:
        if str(w.message).startswith(("category", "keep:")):
            console.print(f"warning: {w.message}", markup=False)
    return result


def filter_command(
    prompts: str | None = typer.Option(
        None, help="Prompt records, or FinanceIQ CSV file/folder; none = the tiny world's."
    ),
    policy: str | None = typer.Option(None, help="Policy directory; none = the tiny world's."),
    reward: list[str] | None = typer.Option(
        None,
        help="Reward source (repeat to sum): RM directory, http(s) URL, module:function, "
        "file.py:function, tiny, mcq, rule:NAME, or a YAML mapping {type: ..., weight: ...}. "
        "Default: tiny.",
    ),
    n: int | None = typer.Option(None, help="Answers sampled per prompt (>= 2; default 8)."),
    std_min: float | None = typer.Option(None, help="Drop prompts with score std below this."),
    std_quantile: float | None = typer.Option(
        None, help="Drop prompts with std below this quantile of the pool (default 0.2)."
    ),
    mean_range: str | None = typer.Option(None, help="'lo,hi': keep lo <= mean <= hi."),
    mean_quantiles: str | None = typer.Option(
        None, help="'lo,hi' quantiles of the pool for the mean (default 0.1,0.9)."
    ),
    calibration: Path | None = typer.Option(
        None, help="JSON of `align rm eval --out`: keep means in bins at least as accurate."
    ),
    keep: int | None = typer.Option(None, help="Prompts to keep (default: every survivor)."),
    out: Path = typer.Option(..., help="Kept prompts (JSONL)."),
    report_dir: Path | None = typer.Option(None, help="Report folder (default <out>_report)."),
    engine: str | None = typer.Option(
        None, help="Rollout engine: hf (default), vllm, vllm-server."
    ),
    engine_options: str | None = typer.Option(
        None, help="YAML mapping of engine options, e.g. '{dtype: bfloat16, url: URL}'."
    ),
    chat_format: str | None = typer.Option(None, help="Chat format of the policy (default hf)."),
    temperature: float | None = typer.Option(None, help="Sampling temperature (default 0.7)."),
    top_p: float | None = typer.Option(None, help="Nucleus sampling (default 0.9)."),
    max_new_tokens: int | None = typer.Option(None, help="Answer length limit (default 48)."),
    max_prompt_length: int | None = typer.Option(
        None, help="Longer prompts are left-truncated (default 256)."
    ),
    batch_size: int | None = typer.Option(None, help="Prompts per engine call (default 64)."),
    drop_zero_std: bool | None = typer.Option(
        None, "--drop-zero-std/--keep-zero-std", help="Drop prompts whose scores are all equal."
    ),
    alpha: float | None = typer.Option(None, help="Selection weight std^alpha (default 1)."),
    seed: int | None = typer.Option(None, help="Seed of sampling and selection (default 0)."),
    cache: bool | None = typer.Option(
        None, "--cache/--no-cache", help="Cache scored samples and resume from them (default on)."
    ),
    cache_dir: Path | None = typer.Option(None, help="Cache folder (default <report>/cache)."),
) -> None:
    """Sample n answers per prompt, score them, drop prompts whose score std is too low or whose
    mean is extreme, and keep a std-weighted sample with each category's share. Defaults are
    those of ``FilterConfig``."""
    from rich.console import Console

    from align.filter.run import FilterConfig

    given = {
        "prompts": prompts, "policy": policy, "engine": engine, "chat_format": chat_format,
        "n": n, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
        "max_prompt_length": max_prompt_length, "batch_size": batch_size, "std_min": std_min,
        "std_quantile": std_quantile, "mean_range": parse_pair(mean_range, "--mean-range"),
        "mean_quantiles": parse_pair(mean_quantiles, "--mean-quantiles"),
        "calibration": str(calibration) if calibration else None, "keep": keep, "alpha": alpha,
        "seed": seed, "drop_zero_std": drop_zero_std, "out": str(out),
        "report_dir": str(report_dir) if report_dir else None,
        "cache_dir": str(cache_dir) if cache_dir else None, "use_cache": cache,
        "rewards": [s for value in reward or [] for s in parse_reward(value)] or None,
        "engine_options": parse_mapping(engine_options, "--engine-options") or None,
    }  # fmt: skip
    cfg = FilterConfig(**{k: v for k, v in given.items() if v is not None})
    console = Console()
    _print_result(_run(cfg, console), console)
