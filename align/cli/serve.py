"""``align rm serve``: a reward model over HTTP (protocol in :mod:`rm.remote`)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from align.cli.config_command import Invocation, config_command
from align.core.config import check_ranges, help_field


def is_loopback(host: str) -> bool:
    """Whether ``host`` names a loopback interface (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost
        return False


def check_exposure(host: str, token: str | None, allow_unauthenticated: bool) -> str | None:
    """Refuse (``ValueError``) to serve a non-loopback interface without a token unless the user
    said so explicitly; returns the warning to print when they did, else None."""
    if is_loopback(host) or token:
        return None
    if not allow_unauthenticated:
        raise ValueError(
            f"--host {host}: refusing to serve beyond this machine without a token; set "
            "ALIGN_RM_TOKEN (or --token), or pass --allow_unauthenticated to serve it open"
        )
    return f"warning: serving on {host} without a token; anyone who can reach it can use it"


@dataclass
class ServeConfig:
    """``align rm serve``: a reward model behind HTTP."""

    model: str = field(metadata={"help": "Reward model directory (safetensors, num_labels 1)."})
    host: str = help_field("Interface to bind (loopback by default).", "127.0.0.1")
    port: int = help_field("TCP port.", 8000, ge=1, le=65535)
    token: str | None = help_field(
        "Require 'Authorization: Bearer TOKEN'; none = $ALIGN_RM_TOKEN (kept out of ps), "
        "else no token.",
        None,
    )
    chat_format: str = help_field("Chat format the reward model reads.", "hf")
    normalize: bool = help_field(
        "Z-score scores with the model's score_stats.json mean/std.", False
    )
    batch_size: int = help_field("Samples per forward pass.", 16, ge=1)
    max_length: int = help_field("Tokens kept per sample (left-truncated).", 1024, ge=1)
    max_batch: int = help_field("Samples of concurrent requests scored together.", 64, ge=1)
    max_items: int = help_field("Most samples one request may carry.", 1024, ge=1)
    max_request_bytes: int = help_field("Largest request body (bytes).", 1 << 20, ge=1)
    trust_remote_code: bool = help_field("Run the model directory's own code.", False)
    allow_unauthenticated: bool = help_field(
        "Serve a non-loopback host without a token (anyone who can reach it can use it).", False
    )

    def __post_init__(self) -> None:
        check_ranges(self)


def run_serve(cfg: ServeConfig, invocation: Invocation) -> None:
    """Serve a reward model: POST /score {prompts, completions[, metadata]} → {scores};
    POST /get_reward {query, prompts, labels} → {rewards, scores, extra_logs} (OpenRLHF's
    remote reward protocol); GET /health."""
    # lazy: rm.functions loads torch/transformers and rm.server asyncio (+15% on 'align --help')
    from rm.functions import LocalRewardModel
    from rm.server import create_app
    from rm.server import serve as run

    console = Console(stderr=True)
    model = Path(cfg.model)
    token = cfg.token or os.environ.get("ALIGN_RM_TOKEN") or None
    warning = check_exposure(cfg.host, token, cfg.allow_unauthenticated)
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"{model}: not a model directory (no config.json)")
    if warning:
        console.print(warning, markup=False, highlight=False, soft_wrap=True)
    scorer = LocalRewardModel.from_pretrained(
        model,
        trust_remote_code=cfg.trust_remote_code,
        normalize=cfg.normalize,
        chat_format=cfg.chat_format,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        name=model.name,
    )
    info = {"model": str(model), "normalize": cfg.normalize, "chat_format": cfg.chat_format}
    app = create_app(
        scorer,
        token=token,
        max_batch=cfg.max_batch,
        max_request_bytes=cfg.max_request_bytes,
        max_items=cfg.max_items,
        info=info,
        score_text=scorer.score_texts,
    )
    console.print(
        f"serving {model} on http://{cfg.host}:{cfg.port}/score (OpenRLHF's protocol: "
        "/get_reward; health: /health)",
        soft_wrap=True,
    )
    run(app, host=cfg.host, port=cfg.port)


serve_command = config_command(
    "serve",
    lambda: ServeConfig,
    run_serve,
    help="Serve a reward model: POST /score {prompts, completions[, metadata]} → {scores}; "
    "POST /get_reward {query, prompts, labels} → {rewards} (OpenRLHF's); GET /health.",
    path=["rm", "serve"],
)
