"""Tensor-parallel vLLM (2 CPU workers, each holding half of every sharded weight): a colocated
engine synced through its workers, and a server synced by a gloo broadcast to both workers (a
group of 3: the trainer and two workers). Greedy tokens and logprobs must equal transformers on
the same weights, before and after the sync (tolerance as in test_vllm_engine.py)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow  # an engine start-up each (~15-30 s)

from rollouts.base import SamplingParams  # noqa: E402
from rollouts.hf_generate import GenerateEngine  # noqa: E402

ATOL = 1e-4
PROMPTS = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12], [13, 14]]
GREEDY = SamplingParams(max_new_tokens=12, temperature=0)


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    updated = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return updated


def assert_answers_like(engine, model, tokenizer):
    ours = engine.generate(PROMPTS, GREEDY)
    reference = GenerateEngine.from_tokenizer(model, tokenizer).generate(PROMPTS, GREEDY)
    assert ours.completion_ids == reference.completion_ids
    for a, b in zip(ours.logprobs, reference.logprobs):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=ATOL, rtol=0)
    return ours


@pytest.mark.parametrize("kind", ["vllm", "vllm-server"])
def test_tensor_parallel_engine_follows_synced_weights(
    kind, tiny_world, world_tokenizer, world_policy
):
    from rollouts.factory import make_engine

    engine = make_engine(
        kind,
        tiny_world.policy,
        world_tokenizer,
        dtype="float32",
        tensor_parallel_size=2,
        kv_cache_memory_bytes=2**27,
    )
    try:
        before = assert_answers_like(engine, world_policy, world_tokenizer)
        updated = perturbed(world_policy)
        engine.sync_weights(updated)
        after = assert_answers_like(engine, updated, world_tokenizer)
        assert after.completion_ids != before.completion_ids
    finally:
        engine.close()
