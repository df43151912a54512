"""PPO's logged reward metrics average over the kept samples only when a reward drops samples."""

from __future__ import annotations

import json
import math

import pytest

from align.ppo.config import PPOConfig
from align.ppo.run import build_trainer

HALF_UNSCORED = """
def half_unscored(prompts, completions, **kw):
    return [None if k % 2 == 0 else 0.5 for k in range(len(completions))]
"""


def test_dropped_samples_are_left_out_of_score_means(tiny_world, tmp_path):
    """Every even sample unscored (dropped), every kept one 0.5: each score mean is 0.5, where
    averaging the dropped samples in as 0 gave 0.25."""
    file = tmp_path / "half.py"
    file.write_text(HALF_UNSCORED, encoding="utf-8")
    cfg = PPOConfig(
        policy=str(tiny_world.policy),
        critic=str(tiny_world.reward),
        prompts=str(tiny_world.data("prompts")),
        eval_prompts=str(tiny_world.data("eval_prompts")),
        output_dir=str(tmp_path / "run"),
        rewards=[{"type": "python", "fn": f"{file}:half_unscored", "on_invalid": "drop"}],
        missing_eos_penalty=None,  # no penalty: a kept sample's score is exactly 0.5
        normalize_rewards=True,  # the running score statistics must see the kept samples only
        rollout_batch_size=8,
        samples_per_prompt=2,
        max_new_tokens=8,
        total_steps=2,  # the second step's KL is not 0: the actor moved in the first
        ppo_epochs=1,
        num_minibatches=2,
        micro_batch_size=4,
        save_every=0,
        eval_max_prompts=6,
        seed=3,
    )
    trainer = build_trainer(cfg)
    metrics = trainer.train()

    assert metrics["objective/scores"] == 0.5
    # 2 steps × 8 kept samples, each exactly 0.5 (a placeholder 0 would pull the mean down)
    assert trainer.score_stats.count == 16 and trainer.score_stats.mean.item() == 0.5
    assert metrics["reward/half_unscored"] == 0.5
    assert metrics["reward/dropped"] == 0.5 and metrics["reward/dropped_count"] == 8.0
    categories = [k for k in metrics if k.startswith("reward/category/")]
    assert categories and all(metrics[k] == 0.5 for k in categories)
    # the KL side is averaged over the same kept samples, so the parts still add up
    assert metrics["objective/kl"] != 0  # (k1 may be negative)
    assert metrics["objective/non_score_reward"] == pytest.approx(
        -metrics["objective/beta"] * metrics["objective/kl"], rel=1e-9
    )
    assert metrics["objective/rlhf_reward"] == pytest.approx(  # summed per sample in float32
        metrics["objective/scores"] + metrics["objective/non_score_reward"], rel=1e-6
    )

    assert metrics["eval/score"] == 0.5 and metrics["eval/dropped"] == 3.0  # 6 prompts, 3 kept
    held_out = trainer.eval_prompts[:6]
    kept_categories = {held_out[k]["category"] for k in (1, 3, 5)}
    for category in {r["category"] for r in held_out}:
        value = metrics[f"eval/score/{category}"]
        assert value == 0.5 if category in kept_categories else math.isnan(value), category

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert rows[0]["step"] == 0 and rows[0]["eval/score"] == 0.5  # the evaluation before step 1
    assert [r["objective/scores"] for r in rows[1:]] == [0.5, 0.5]
