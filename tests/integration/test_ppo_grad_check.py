"""PPO checks its gradients, not only its losses: a non-finite gradient norm skips the optimizer
step (nothing is applied) and ``max_bad_steps`` such PPO steps in a row abort, naming the step."""

from __future__ import annotations

import json

import pytest
import torch

from align.ppo.run import build_trainer
from tests.integration.test_ppo_run import small_config


def test_non_finite_gradient_with_a_finite_loss_is_skipped_then_aborts(tiny_world, tmp_path):
    overrides = dict(rollout_batch_size=4, max_new_tokens=8, ppo_epochs=1, save_every=0)
    cfg = small_config(tiny_world, tmp_path, max_bad_steps=2, eval_max_prompts=2, **overrides)
    trainer = build_trainer(cfg)
    actor = trainer.model.actor
    before = {k: v.clone() for k, v in actor.state_dict().items()}
    # every backward pass leaves a NaN in one actor gradient; the losses stay finite
    weight = next(p for p in actor.parameters() if p.requires_grad)
    weight.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite gradient norm in 2 PPO steps in a row, the last at step 2;",
    ):
        trainer.train()
    after = actor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no step was applied
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r.get("skipped") for r in rows if r["step"] > 0] == [1.0]  # step 1 logged, skipped
