"""``align tiny model`` and ``align tiny data``: stand-ins for a user's model and data files.

``tiny model`` writes a random-init model directory of any architecture the matrix covers
(:mod:`align.tiny.random_models`), ``tiny data`` the tiny world's data files (the ``data/`` of
``align tiny build``, without training anything), so every command can be tried on a model
directory and data files exactly as with one's own (the README's "Your own model" chain).
"""

from __future__ import annotations

from pathlib import Path

import typer

from align.cli.common import console


def _refuse_non_empty(out: Path, force: bool) -> None:
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"--out: {out} is not empty; pass --force to write there anyway")


def tiny_model(
    architecture: str = typer.Option(
        ..., "--architecture", help="llama, qwen2, qwen3, mistral, gemma2, phi3, gpt_neox, gpt2."
    ),
    out: Path = typer.Option(..., "--out", help="Model directory to write."),
    shape: str = typer.Option(
        "tiny", "--shape", help="tiny (hidden 64, 2 layers), small, qwen2-0.5b or qwen2-1.5b."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
    force: bool = typer.Option(False, "--force", help="Replace --out when it is not empty."),
) -> None:
    """A random-init causal LM of any architecture, as a model directory.

    Safetensors weights and a tokenizer trained on the tiny world's text with the xuanyuan-6b
    chat template; nothing is downloaded."""
    # lazy: torch and transformers load only to build (keeps 'align --help' fast)
    from align.core.io import atomic_directory
    from align.tiny.random_models import ARCHITECTURES, SHAPES, save_random_model

    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"--architecture: expected one of {', '.join(ARCHITECTURES)}, got {architecture!r}"
        )
    if shape not in SHAPES:
        raise ValueError(f"--shape: expected one of {', '.join(SHAPES)}, got {shape!r}")
    _refuse_non_empty(out, force)
    with atomic_directory(out) as tmp:
        save_random_model(architecture, tmp, shape, seed=seed)
    console.print(
        f"{architecture} ({shape}, random weights): {out}", soft_wrap=True, highlight=False
    )


def tiny_data(
    out: Path = typer.Option(..., "--out", help="Folder for the .jsonl files."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the generator."),
    sft_per_category: int | None = typer.Option(
        None, "--sft_per_category", help="SFT conversations per sub-domain."
    ),
    prefs_per_category: int | None = typer.Option(
        None, "--prefs_per_category", help="Preference pairs per sub-domain."
    ),
    rl_prompts_per_category: int | None = typer.Option(
        None, "--rl_prompts_per_category", help="RL prompts per sub-domain."
    ),
    eval_per_category: int | None = typer.Option(
        None, "--eval_per_category", help="Held-out prompts and pairs per sub-domain."
    ),
    force: bool = typer.Option(False, "--force", help="Write into --out when it is not empty."),
) -> None:
    """The tiny world's data files (prompts, preference pairs, SFT), nothing trained.

    Writes sft, prefs, prompts, eval_prompts and eval_prefs .jsonl; the per-category counts
    default to those of `align tiny build`."""
    # lazy: loads datasets; keeps 'align --help' fast
    from align.tiny.build import TinyWorldConfig, write_data

    given = {
        "seed": seed,
        "sft_per_category": sft_per_category,
        "prefs_per_category": prefs_per_category,
        "rl_prompts_per_category": rl_prompts_per_category,
        "eval_per_category": eval_per_category,
    }
    cfg = TinyWorldConfig(**{k: v for k, v in given.items() if v is not None})
    _refuse_non_empty(out, force)
    for name, count in write_data(out, cfg).items():
        console.print(f"{out / name}.jsonl: {count} records", soft_wrap=True, highlight=False)
