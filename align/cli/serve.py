"""``align rm serve``: a reward model over HTTP (protocol in :mod:`rm.remote`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from align.cli.rm import rm_app

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@rm_app.command("serve")
def serve(
    model: Path = typer.Option(..., help="Reward model directory (safetensors, num_labels 1)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default)."),
    port: int = typer.Option(8000, help="TCP port."),
    token: str | None = typer.Option(
        None,
        envvar="ALIGN_RM_TOKEN",
        help="Require 'Authorization: Bearer TOKEN' (or set ALIGN_RM_TOKEN, kept out of ps).",
    ),
    chat_format: str = typer.Option("hf", help="Chat format the reward model reads."),
    normalize: bool = typer.Option(
        False, help="Z-score scores with the model's score_stats.json mean/std."
    ),
    batch_size: int = typer.Option(16, help="Samples per forward pass."),
    max_length: int = typer.Option(1024, help="Tokens kept per sample (left-truncated)."),
    max_batch: int = typer.Option(64, help="Samples of concurrent requests scored together."),
    max_items: int = typer.Option(1024, help="Most samples one request may carry."),
    max_request_bytes: int = typer.Option(1 << 20, help="Largest request body (bytes)."),
    trust_remote_code: bool = typer.Option(False, help="Run the model directory's own code."),
) -> None:
    """Serve a reward model: POST /score {prompts, completions[, metadata]} → {scores};
    GET /health."""
    from rm.functions import LocalRewardModel
    from rm.server import create_app
    from rm.server import serve as run

    console = Console(stderr=True)
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"{model}: not a model directory (no config.json)")
    if host not in LOOPBACK and not token:
        console.print(
            f"warning: serving on {host} without a token; anyone who can reach it can use it"
        )
    scorer = LocalRewardModel.from_pretrained(
        model,
        trust_remote_code=trust_remote_code,
        normalize=normalize,
        chat_format=chat_format,
        batch_size=batch_size,
        max_length=max_length,
        name=model.name,
    )
    info = {"model": str(model), "normalize": normalize, "chat_format": chat_format}
    app = create_app(
        scorer,
        token=token,
        max_batch=max_batch,
        max_request_bytes=max_request_bytes,
        max_items=max_items,
        info=info,
    )
    console.print(
        f"serving {model} on http://{host}:{port}/score (health: /health)", soft_wrap=True
    )
    run(app, host=host, port=port)
