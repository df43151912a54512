"""PPO's online filter on the tiny world: a filtered step's groups and counts, and exact resume
with the filter on (its refill draws and running window are in the checkpoint)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from align.core.mixture import MixtureSampler
from align.filter.selection import prompt_stats
from align.ppo.config import PPOConfig
from align.ppo.run import build_trainer
from tests.integration.test_ppo_run import small_config


def filtered_config(world, out, **overrides) -> PPOConfig:
    """test_ppo_run's small config, 2 steps, with the online filter on."""
    values = dict(total_steps=2, ppo_epochs=1, micro_batch_size=8, save_every=1,
                  eval_max_prompts=2, online_filter={"enabled": True, "max_rounds": 2})  # fmt: skip
    return small_config(world, out, **{**values, **overrides})


def test_a_filtered_step_keeps_the_draws_shares_and_drops_flat_groups(tiny_world, tmp_path):
    trainer = build_trainer(filtered_config(tiny_world, tmp_path))
    copy = MixtureSampler(trainer.sampler.categories)
    copy.load_state_dict(trainer.sampler.state_dict())
    drawn = Counter(trainer.sampler.categories[i] for i in copy.sample(8))
    exp, info = trainer.online_filter.experience(trainer, {})
    counts = info["online_filter"]
    assert exp.mask.shape[0] == len(info["categories"]) == 16
    assert Counter(info["categories"][::2]) == drawn  # each category's share of the draw
    # the default rule drops σ = 0 groups only: the flat groups left in are the backfilled ones
    scores = exp.scores.cpu().numpy().reshape(8, 2)
    _, std, valid = prompt_stats(scores)
    assert valid.all()
    assert int((std == 0).sum()) == counts["filter/backfilled"]
    assert counts["filter/kept"] + counts["filter/backfilled"] == 8
    extra = counts["filter/generated"] - 16
    assert extra == counts["filter/extra_generations"] <= 2 * 8  # budget: 8 extra prompts
    assert counts["filter/dropped_std"] * 2 >= extra  # refills replace dropped groups only
    for c in drawn:
        kept = counts[f"filter/kept/{c}"] + counts[f"filter/backfilled/{c}"]
        assert kept == drawn[c]


@pytest.mark.slow
def test_resume_is_exact_with_the_filter_on(tiny_world, tmp_path):
    rules = {"enabled": True, "std_quantile": 0.3, "mean_quantiles": (0.05, 0.95), "window": 12,
             "max_rounds": 1}  # fmt: skip
    small = {"online_filter": rules, "rollout_batch_size": 6, "max_new_tokens": 8, "save_every": 0}
    straight = tmp_path / "straight"
    build_trainer(filtered_config(tiny_world, straight, **small)).train()
    resumed = tmp_path / "resumed"
    build_trainer(filtered_config(tiny_world, resumed, **small, total_steps=1)).train()
    state = torch.load(resumed / "checkpoints" / "step-1" / "trainer_state.pt")
    first = [json.loads(line) for line in (resumed / "metrics.jsonl").open()][-1]
    groups = int(first["filter/generated"]) // 2  # every group of step 1 (all are scored)
    assert state["online_filter"]["window"].shape == (min(groups, 12), 2)
    trainer = build_trainer(filtered_config(tiny_world, resumed, **small, resume_from="latest"))
    assert trainer.step == 1
    assert np.array_equal(trainer.online_filter.window, state["online_filter"]["window"].numpy())
    trainer.train()
    a = load_file(straight / "checkpoints" / "step-2" / "actor" / "model.safetensors")
    b = load_file(resumed / "checkpoints" / "step-2" / "actor" / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name

    def filter_log(out):
        rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
        return [{k: v for k, v in r.items() if k.startswith("filter/")} for r in rows]

    assert filter_log(straight) == filter_log(resumed)
    assert filter_log(straight)[-1]["filter/generated"] > 12  # the second step refilled
