"""PPO's memory knobs on the tiny world: gradient checkpointing gives the plain gradients (LoRA
included) with less memory, micro-batches by token budget give the fixed-count update, the
generation path still works with checkpointing on, and 2 DeepSpeed ZeRO-3 processes with every
knob on follow one plain process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from align.ppo.config import PPOConfig
from align.ppo.run import build_trainer
from tests.helpers import ZERO3_FP32
from tests.integration.test_ppo_distributed import align_ppo, ppo_args, trajectory
from tests.integration.test_ppo_run import final_weights, small_config

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("ckpt_memory_probe.py")
REWARDS = [{"type": "python", "fn": "align.tiny.reward:tiny_world_reward"}]


def knob_config(world, out, **overrides):
    """16 samples (8 prompts × 2) in one minibatch; prompts of the tiny world are ≤ 24 tokens."""
    values = dict(
        rewards=REWARDS,
        rollout_batch_size=8,
        samples_per_prompt=2,
        num_minibatches=1,
        max_prompt_length=24,
        max_new_tokens=12,
        micro_batch_size=4,
    )
    return small_config(world, out, **{**values, **overrides})


def rollout(trainer):
    """One rollout batch with advantages, from a fixed seed (same samples for equal weights)."""
    torch.manual_seed(0)
    index = trainer.sampler.sample(trainer.cfg.rollout_batch_size)
    rows, prompt_ids = [trainer.prompts[i] for i in index], [trainer.prompt_ids[i] for i in index]
    exp, _ = trainer.make_experience(rows, prompt_ids, {})
    trainer.compute_advantages(exp)
    return exp


def layer_calls(model) -> list[str]:
    """Appends a name each time the first decoder layer of actor or critic starts a forward
    (a recomputation in the backward pass included)."""
    calls: list[str] = []
    for name in ("actor", "critic"):
        modules = getattr(model, name).modules()
        layer = next(m for m in modules if type(m).__name__.endswith("DecoderLayer"))
        layer.register_forward_pre_hook(lambda *_, name=name: calls.append(name))
    return calls


def gradients(trainer, exp) -> dict[str, torch.Tensor]:
    """The summed gradients of one minibatch (no optimizer step), by parameter name."""
    trainer.model.train()
    trainer.optimizer.zero_grad()
    trainer._accumulate_gradients(exp)
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.optimizer.zero_grad()
    return grads


def assert_same_gradients(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    largest = max(g.abs().max().item() for g in a.values())
    assert worst <= atol, (worst, largest)
    assert largest > 100 * atol  # the comparison is not between two near-zero sets


@pytest.fixture(scope="module")
def plain(tiny_world, tmp_path_factory):
    """A trainer without knobs, its rollout batch and its gradients on it."""
    trainer = build_trainer(knob_config(tiny_world, tmp_path_factory.mktemp("plain")))
    exp = rollout(trainer)
    calls = layer_calls(trainer.model)
    grads = gradients(trainer, exp)
    assert calls.count("actor") == calls.count("critic") == 4  # 16 rows / 4: one pass each
    return trainer, exp, grads


def test_gradient_checkpointing_gives_the_plain_gradients(tiny_world, tmp_path, plain):
    """Same gradients within 1e-5; each decoder layer runs twice per micro-batch (forward and
    recomputation); generation (which turns checkpointing off and on again around it) gives
    the plain run's samples and leaves checkpointing on, non-reentrant."""
    _, plain_exp, plain_grads = plain
    trainer = build_trainer(knob_config(tiny_world, tmp_path, gradient_checkpointing=True))
    assert trainer.model.is_gradient_checkpointing
    exp = rollout(trainer)
    assert torch.equal(exp.input_ids, plain_exp.input_ids)
    assert trainer.model.is_gradient_checkpointing
    assert trainer.model.checkpointing_kwargs == {"use_reentrant": False}
    calls = layer_calls(trainer.model)
    grads = gradients(trainer, plain_exp)
    assert calls.count("actor") == calls.count("critic") == 8
    assert_same_gradients(grads, plain_grads, atol=1e-5)


def test_gradient_checkpointing_with_lora(tiny_world, tmp_path, plain):
    """LoRA's frozen embeddings do not stop the gradients of the adapters inside checkpointed
    layers (a reentrant checkpoint without input gradients would leave them None)."""
    _, exp, _ = plain
    grads = {}
    for on in (False, True):
        cfg = knob_config(tiny_world, tmp_path / str(on), lora_r=4, gradient_checkpointing=on)
        grads[on] = gradients(build_trainer(cfg), exp)
    assert any("lora_B" in k for k in grads[True])
    assert_same_gradients(grads[True], grads[False], atol=1e-5)


def test_token_budget_gives_the_fixed_count_update(tiny_world, tmp_path, plain):
    """Micro-batches packed within 100 padded tokens: the summed gradients and the parameters
    after one optimizer step equal those of 4 micro-batches of 4 rows.

    Tolerances: losses are float32 (logprobs and values are cast before the math) and only the
    grouping of the float32 sums changes, so gradients agree to ~1e-7 here (largest ~0.5);
    atol 1e-6 leaves a margin yet is far below what a lost or doubled micro-batch moves. The
    first AdamW step moves each weight by ~lr·sign(g) = 1e-4 whatever the gradient's scale, so
    parameters within 1e-6 catch a wrong set of rows, and the gradient check catches scale."""
    _, exp, _ = plain
    budget = 100
    fixed = build_trainer(knob_config(tiny_world, tmp_path / "fixed"))
    packed = build_trainer(knob_config(tiny_world, tmp_path / "packed",
                                       max_tokens_per_micro_batch=budget))  # fmt: skip
    batches = packed._micro_batches(exp)
    assert all(mb.input_ids.numel() <= budget for mb in batches)  # rows × padded width
    assert sum(mb.mask.shape[0] for mb in batches) == 16
    assert sorted(len(mb.mask) for mb in batches) != [4, 4, 4, 4]  # a different split
    full_width = exp.input_ids.shape[1]
    assert min(mb.input_ids.shape[1] for mb in batches) < full_width  # padding trimmed
    assert_same_gradients(gradients(packed, exp), gradients(fixed, exp), atol=1e-6)

    fixed.model.train(), packed.model.train()
    a, b = fixed._optimizer_step(exp), packed._optimizer_step(exp)
    for key in ("loss/policy_avg", "loss/value_avg", "policy/entropy_avg"):
        assert abs(a[key] - b[key]) < 1e-6, key
    moved = 0.0
    params = zip(fixed.model.named_parameters(), packed.model.named_parameters(), strict=True)
    for (name, p), (_, q) in params:
        assert (p - q).abs().max().item() <= 1e-6, name
    for p, q in zip(fixed.model.parameters(), plain[0].model.parameters()):  # not stepped
        moved = max(moved, (p - q).abs().max().item())
    assert moved > 5e-5  # the step moved the weights by ~lr = 1e-4


def test_gradient_checkpointing_lowers_peak_memory():
    """Hidden 512, 2 rows of 512 tokens, actor + critic forward and backward in fresh
    processes: checkpointing adds at most 3/4 of the plain peak and at least 40 MiB less
    (measured 202 vs 115 MiB with 2 layers). Large allocations are mmapped
    (MALLOC_MMAP_THRESHOLD_), so freed activations leave the RSS instead of staying in the
    heap; the peak is the probe's own VmHWM (``ru_maxrss`` would start at this process's RSS,
    inherited through fork and exec)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "131072"}

    def probe(mode: str) -> dict:
        done = subprocess.run(
            [sys.executable, str(PROBE), mode, "--layers", "2"],
            capture_output=True, text=True, env=env, timeout=600, check=True,
        )  # fmt: skip
        return json.loads(done.stdout.strip().splitlines()[-1])

    off, on = probe("off"), probe("on")
    assert on["params_with_grad"] == off["params_with_grad"] > 0
    assert on["added_mib"] <= 0.75 * off["added_mib"], (on, off)
    assert off["added_mib"] - on["added_mib"] >= 40, (on, off)




@pytest.mark.slow
def test_zero3_with_every_knob_follows_one_plain_process(tiny_world, tmp_path):
    """2 ZeRO-3 processes (fp32) with gradient checkpointing, micro-batches by token budget
    (each process packs its own rows; the counts are evened out) and offload_frozen_models
    (DeepSpeed's offload_param for the reference engine) against one process without knobs:
    the same losses, KL and scores at every step and the same final weights. Before the
    accumulation boundary was marked, DeepSpeed stepped the optimizer after every micro-batch
    (2 ZeRO-2 processes then had a first-step policy loss of -0.0162 against -0.0143). DeepSpeed
    clips by the global norm of actor and critic together, the others per model: clipping is
    off here."""
    pytest.importorskip("deepspeed")
    common = dict(reference=tiny_world.policy, rewards=tiny_world.reward, total_steps=2,
                  max_prompt_length=24, max_grad_norm=1e6)  # fmt: skip
    plain = tmp_path / "plain"
    build_trainer(PPOConfig.from_sources(None, ppo_args(tiny_world, plain, **common))).train()
    config = tmp_path / "zero3_fp32.yaml"
    config.write_text(ZERO3_FP32, encoding="utf-8")
    knobs = dict(gradient_checkpointing=True, max_tokens_per_micro_batch=80,
                 offload_frozen_models=True)  # fmt: skip
    zero3 = tmp_path / "zero3"
    align_ppo(*ppo_args(tiny_world, zero3, **common, **knobs),
              "--num_processes", "2", "--accelerate_config", str(config))  # fmt: skip
    one, two = trajectory(plain), trajectory(zero3)
    assert len(one) == len(two) == 2
    assert torch.allclose(torch.tensor(one), torch.tensor(two), atol=1e-5, rtol=1e-5), (one, two)
    for a, b in zip(final_weights(plain, 2), final_weights(zero3, 2)):
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
