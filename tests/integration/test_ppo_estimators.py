"""Issue 18 in the trainer: critic-free estimators (no critic built, exact resume), the critic's
warm-up, extra updates and divergence guard, and the loss aggregation modes under 1 vs 2
processes. The math itself is tested in tests/unit/test_estimators.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align.ppo.config import PPOConfig
from align.ppo.run import build_trainer
from align.ppo.trainer import CriticDivergedError
from tests.integration.test_ppo_run import small_config

HERE = Path(__file__).resolve().parent
DDP = HERE.parents[1] / "recipes" / "accelerate_configs" / "ddp.yaml"


def config(world, out, **overrides) -> PPOConfig:
    """test_ppo_run's small config at half its size: 2 steps of 4 prompts × 2 answers."""
    values = dict(rollout_batch_size=4, max_new_tokens=8, total_steps=2, ppo_epochs=1,
                  micro_batch_size=2, save_every=1, eval_max_prompts=2, seed=11)  # fmt: skip
    return small_config(world, out, **{**values, **overrides})


def metric_rows(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").open()]


def test_critic_free_run_builds_no_critic_and_resumes_exactly(tiny_world, tmp_path):
    """GRPO with clip-higher, Dr. GRPO's aggregation and TIS: no critic is loaded (a critic
    path given is not read), the checkpoint has no critic, and 1 + 1 resumed steps equal 2."""
    grpo = dict(
        advantage_estimator="grpo",
        loss_agg_mode="seq-mean-token-sum-norm",
        clip_eps_high=0.28,
        tis_cap=2.0,
    )
    straight = build_trainer(config(tiny_world, tmp_path / "straight", **grpo))
    assert straight.accelerator.unwrap_model(straight.model).critic is None
    assert set(straight.param_counts) == {"params/actor_trainable", "params/actor_total"}
    assert len(straight.optimizer.param_groups) == 1
    straight.train()
    ckpt = tmp_path / "straight" / "checkpoints" / "step-2"
    assert not (ckpt / "critic").exists() and (ckpt / "actor" / "model.safetensors").is_file()
    steps = [r for r in metric_rows(tmp_path / "straight") if "loss/policy_avg" in r]
    assert steps and all("loss/value_avg" not in r for r in steps)
    assert all(r["policy/tis_weight_mean"] == pytest.approx(1.0, abs=1e-3) for r in steps)
    assert all("critic/explained_variance" not in r for r in steps)

    resumed = tmp_path / "resumed"
    build_trainer(config(tiny_world, resumed, total_steps=1, **grpo)).train()
    build_trainer(config(tiny_world, resumed, resume_from="latest", **grpo)).train()
    a = load_file(ckpt / "actor" / "model.safetensors")
    b = load_file(resumed / "checkpoints" / "step-2" / "actor" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_critic_warmup_then_extra_critic_updates(tiny_world, tmp_path):
    """Step 1 is a warm-up step (the actor does not move, the critic does), with two critic
    passes; explained variance and value error are logged."""
    trainer = build_trainer(
        config(
            tiny_world,
            tmp_path,
            total_steps=1,
            save_every=0,
            critic_warmup_steps=1,
            critic_updates_per_step=2,
        )
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    actor = {k: v.clone() for k, v in model.actor.state_dict().items()}
    critic = {k: v.clone() for k, v in model.critic.state_dict().items()}
    metrics = trainer.train()
    assert all(torch.equal(actor[k], v) for k, v in model.actor.state_dict().items())
    assert any(not torch.equal(critic[k], v) for k, v in model.critic.state_dict().items())
    for key in ("loss/value_avg", "loss/value_extra_avg", "critic/value_error"):
        assert metrics[key] > 0, key
    assert metrics["critic/explained_variance"] <= 1.0


def test_critic_divergence_stops_the_run(tiny_world, tmp_path):
    """An explained-variance floor no critic reaches (EV <= 1) stops the run after `patience`
    steps; non-finite values stop it at once."""
    trainer = build_trainer(
        config(
            tiny_world,
            tmp_path,
            total_steps=3,
            save_every=0,
            critic_min_explained_variance=1.5,
            critic_divergence_patience=2,
        )
    )
    with pytest.raises(CriticDivergedError, match="below critic_min_explained_variance 1.5 for 2"):
        trainer.train()
    assert trainer.step == 1  # step 2 raised before its update

    trainer.cfg.critic_min_explained_variance = None
    critic = trainer.accelerator.unwrap_model(trainer.model).critic
    with torch.no_grad():
        for p in critic.parameters():
            p.fill_(float("nan"))
    with pytest.raises(CriticDivergedError, match="critic diverged at step 2: .* non-finite"):
        trainer.ppo_step()


def run_worker(world, out: Path, processes: int) -> dict[str, torch.Tensor]:
    args = [world.policy, world.data("prompts"), world.data("eval_prompts"), out, f"{out}.pt"]
    launch = [sys.executable]
    if processes > 1:
        launch += ["-m", "accelerate.commands.launch", "--config_file", str(DDP)]
        launch += ["--num_processes", str(processes)]
    env = {**os.environ}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(
        [*launch, str(HERE / "agg_invariance_worker.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(f"{out}.pt")


@pytest.mark.slow
def test_aggregation_modes_give_the_same_update_on_one_and_two_processes(tiny_world, tmp_path):
    """The actor's gradient of one minibatch in each loss_agg_mode: 2 DDP processes (each with
    half the rows, micro-batches of 2) equal 1 process within 1e-6; the modes differ."""
    one = run_worker(tiny_world, tmp_path / "one", 1)
    two = run_worker(tiny_world, tmp_path / "two", 2)
    assert set(one) == set(two) == {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"}
    for mode in one:
        assert float(one[mode].abs().max()) > 1e-3, mode  # a real gradient
        assert float((one[mode] - two[mode]).abs().max()) < 1e-6, mode
    assert float((one["token-mean"] - one["seq-mean-token-mean"]).abs().max()) > 1e-4
    assert float((one["token-mean"] - one["seq-mean-token-sum-norm"]).abs().max()) > 1e-4
