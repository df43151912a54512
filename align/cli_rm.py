"""``align rm ...``: reward models (training, evaluation, serving)."""

from __future__ import annotations

import typer

rm_app = typer.Typer(help="Reward models: train (UFRM), evaluate, serve.", no_args_is_help=True)
