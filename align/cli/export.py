"""``align export RUN --out DIR``: a run's model as a standalone Hugging Face model directory
(:mod:`align.export`)."""

from __future__ import annotations

from pathlib import Path

import typer

from align.cli.common import console


def export_command(
    run: Path = typer.Argument(
        ...,
        metavar="RUN",
        help="A run directory (ppo, pei, sft, pretrain, rm train), one of its checkpoints, or a "
        "model directory. A run exports its final model, else its latest checkpoint's.",
    ),
    out: Path = typer.Option(..., "--out", help="Directory to write the model into."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --out when it is not empty."
    ),
    chat_format: str | None = typer.Option(
        None,
        "--chat_format",
        help="Chat template the tokenizer gets (xuanyuan, xuanyuan-6b, ziya2, hf); default: "
        "the run's chat_format.",
    ),
    base_model: Path | None = typer.Option(
        None,
        "--base_model",
        help="Base model a LoRA adapter merges into; default: the one the adapter names.",
    ),
    quantize: str = typer.Option(
        "none",
        "--quantize",
        help="Weight-only quantization for deployment: none, int8 (per channel) or int4 "
        "(groups of --group_size); round-to-nearest, compressed-tensors format (transformers "
        "loads it; vLLM too, on CPU int4 only).",
    ),
    group_size: int = typer.Option(
        128, "--group_size", help="Input weights sharing one int4 scale (divides every layer)."
    ),
) -> None:
    """A run's model as a standalone Hugging Face model directory.

    LoRA merged, safetensors only, the run's chat template in the tokenizer, a generation
    config (eos/pad ids, the run's sampling settings); written whole or not at all."""
    from align.export.write import export_model  # lazy: loads transformers; keeps --help fast

    done = export_model(
        run,
        out,
        overwrite=overwrite,
        chat_format=chat_format,
        base_model=base_model,
        quantize=quantize,
        group_size=group_size,
    )
    merged = f", LoRA merged into {done.base_model}" if done.base_model else ""
    console.print(f"exported {done.model_dir}{merged}", soft_wrap=True, highlight=False)
    own = " (the tokenizer's own template)" if done.chat_format == "hf" else ""
    console.print(f"chat format: {done.chat_format}{own}", highlight=False)
    if done.scheme is not None:
        groups = f", groups of {done.scheme.group_size}" if done.scheme.group_size else ""
        console.print(f"quantized: int{done.scheme.bits} weights{groups}", highlight=False)
    console.print(f"model directory: {done.out}", soft_wrap=True, highlight=False)
