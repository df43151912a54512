"""``align rm train`` / ``recipes/ufrm.py``: UFRM with the tiny world filling in what the config
leaves empty, an evaluation of every stage on every held-out set, and a summary on disk."""

from __future__ import annotations

import json
from pathlib import Path

from rm.evaluate import evaluate_reward_model, to_markdown
from rm.ufrm import UFRMConfig, run_ufrm


def fill_tiny_defaults(cfg: UFRMConfig) -> UFRMConfig:
    """Model, training and eval data from the tiny world (built on first use) where unset."""
    if cfg.model is not None and cfg.train_data is not None:
        return cfg
    from align.tiny.build import build_tiny_world

    world, _ = build_tiny_world()
    cfg.model = cfg.model or str(world.reward)
    if cfg.train_data is None:
        cfg.train_data = str(world.data("prefs"))
        cfg.eval_data = cfg.eval_data or [str(world.data("eval_prefs"))]
    return cfg


def run(cfg: UFRMConfig) -> dict:
    """Train both stages, evaluate each on every ``eval_data`` file, write ``summary.json`` and
    ``report.md`` into ``output_dir``."""
    cfg = fill_tiny_defaults(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")

    def evaluate(model_dir: Path) -> dict:
        return {
            path: evaluate_reward_model(
                model_dir, path, cfg.chat_format, cfg.max_length, cfg.eval_batch_size
            )
            for path in cfg.eval_data
        }

    summary = run_ufrm(cfg, evaluate_fn=evaluate if cfg.eval_data else None)
    report = []
    for stage in summary["stages"]:
        for result in stage.get("eval", {}).values():
            report.append(f"## Stage {stage['stage']}\n\n{to_markdown(result)}")
    (out / "summary.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    (out / "report.md").write_text("\n".join(report), encoding="utf-8")
    return summary
