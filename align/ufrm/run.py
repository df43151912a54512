"""``align rm train`` / ``recipes/ufrm.py``: UFRM with the tiny world filling in what the config
leaves empty when it names no model (with a model, ``train_data`` is required), an evaluation of
every stage on every held-out set, and a summary on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import TrainerCallback

from align.core.config import missing_inputs_error
from align.core.outputs import check_output_dir
from align.core.tracking import check_report_to
from align.tiny.build import build_tiny_world
from rm.evaluate import evaluate_reward_model, to_markdown
from rm.ufrm import UFRMConfig, run_ufrm


class StageProgress(TrainerCallback):
    """One rich progress bar per training stage (optimizer steps), with the last logged loss
    and accuracy; shown by the main process only."""

    def __init__(self, bar) -> None:
        self.bar, self.task, self.stages = bar, None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.stages += 1
            self.task = self.bar.add_task(f"stage {self.stages}", total=state.max_steps, info="")

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.task is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss", (logs or {}).get("train_loss"))
        if state.is_world_process_zero and self.task is not None and loss is not None:
            info = f"loss {float(loss):.4f}"
            if "accuracy" in logs:
                info += f"  acc {float(logs['accuracy']):.2f}"
            self.bar.update(self.task, info=info)


def check_inputs(cfg: UFRMConfig) -> None:
    """With a ``model`` given, nothing comes from the tiny world: ``train_data`` is required
    (one line naming it otherwise); ``eval_data`` may stay empty (no held-out evaluation)."""
    if cfg.model is not None and cfg.train_data is None:
        raise missing_inputs_error(
            ("model", cfg.model),
            [("train_data", "stage-1 preference records {prompt | messages, chosen, rejected, "
              "category}")],
        )  # fmt: skip


def fill_tiny_defaults(cfg: UFRMConfig) -> UFRMConfig:
    """With no ``model`` given, the model and the data left unset from the tiny world (built on
    first use); with one, the config as it is (:func:`check_inputs`)."""
    check_inputs(cfg)
    if cfg.model is not None:
        return cfg
    world, _ = build_tiny_world()
    cfg.model = cfg.model or str(world.reward)
    if cfg.train_data is None:
        cfg.train_data = str(world.data("prefs"))
        cfg.eval_data = cfg.eval_data or [str(world.data("eval_prefs"))]
    return cfg


def run(cfg: UFRMConfig, progress=None) -> dict:
    """Train both stages, evaluate each on every ``eval_data`` file, write ``config.yaml``,
    ``summary.json`` and ``report.md`` into ``output_dir`` (main process only). ``progress``: a
    ``TrainerCallback`` shown instead of the Trainer's tqdm bar. An ``output_dir`` that cannot
    be written fails first, in one line (before the tiny world is built or a model loads), and
    so does a ``model`` without ``train_data``."""
    check_inputs(cfg)
    check_output_dir(cfg.output_dir, "output_dir")
    cfg.report_to = check_report_to(cfg.report_to, others=True)  # before any model loads
    cfg = fill_tiny_defaults(cfg)
    out = Path(cfg.output_dir)
    # RANK, not PartialState: before the Trainer sets up the process group every process
    # would call itself the main one
    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")

    def evaluate(model_dir: Path) -> dict:
        return {
            path: evaluate_reward_model(
                model_dir, path, cfg.chat_format, cfg.max_length, cfg.eval_batch_size,
                default_category=cfg.default_category,
            )  # fmt: skip
            for path in cfg.eval_data
        }

    summary = run_ufrm(cfg, evaluate_fn=evaluate if cfg.eval_data else None, progress=progress)
    if main:
        _write_outputs(out, summary)
    return summary


def _write_outputs(out: Path, summary: dict) -> None:
    report = []
    for stage in summary["stages"]:
        for result in (stage.get("eval") or {}).values():
            report.append(f"## Stage {stage['stage']}\n\n{to_markdown(result)}")
    (out / "summary.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    (out / "report.md").write_text("\n".join(report), encoding="utf-8")
