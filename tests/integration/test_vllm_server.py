"""A real vLLM OpenAI-compatible server on 127.0.0.1 with the tiny world's policy.

Tolerance as in test_vllm_engine.py (measured differences ≤ 7e-6; ATOL = 1e-4).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow  # one server start-up (~20-40 s on 2 busy cores)

from rollouts.base import SamplingParams  # noqa: E402
from rollouts.hf_generate import GenerateEngine  # noqa: E402
from tests.helpers import chat_prompt_ids  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def prompts(tiny_world, world_tokenizer):
    return chat_prompt_ids(tiny_world, world_tokenizer, 6)


@pytest.fixture(scope="module")
def server(tiny_world, world_tokenizer):
    from rollouts.factory import make_engine

    engine = make_engine(
        "vllm-server",
        tiny_world.policy,
        world_tokenizer,
        dtype="float32",
        kv_cache_memory_bytes=2**28,
        max_retries=1,
        retry_backoff_s=0.1,
    )
    yield engine
    engine.close()


def assert_same_answers(ours, reference):
    assert ours.completion_ids == reference.completion_ids
    assert ours.finish_reasons == reference.finish_reasons
    for a, b in zip(ours.logprobs, reference.logprobs):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=ATOL, rtol=0)


def test_server_greedy_equals_generate_and_sampling_is_grouped(
    server, world_policy, prompts, world_tokenizer
):
    assert server.url.startswith("http://127.0.0.1:")
    greedy = SamplingParams(max_new_tokens=20, temperature=0)
    hf = GenerateEngine.from_tokenizer(world_policy, world_tokenizer)
    reference = hf.generate(prompts, greedy)
    assert_same_answers(server.generate(prompts, greedy), reference)
    sampled = server.generate(prompts[:2], SamplingParams(max_new_tokens=8, seed=1), n=3)
    assert sampled.prompt_ids == [p for p in prompts[:2] for _ in range(3)]
    assert len(sampled) == 6 and all(len(c) == len(lp) for c, lp in
                                     zip(sampled.completion_ids, sampled.logprobs))  # fmt: skip


@pytest.mark.parametrize("weight_sync", ["gloo", "file"])
def test_server_follows_synced_weights(server, world_policy, prompts, world_tokenizer, weight_sync):
    """Perturbed weights → sync → the server answers like transformers on the new weights,
    through a gloo broadcast (the CPU twin of the NCCL one) and through a weights file; a second
    sync over the same broadcast group works too."""
    import copy
    import dataclasses

    from rollouts.vllm_server import VLLMServerEngine

    engine = VLLMServerEngine(
        dataclasses.replace(server.options, weight_sync=weight_sync), server.eos_token_ids
    )
    greedy = SamplingParams(max_new_tokens=20, temperature=0)
    before = engine.generate(prompts, greedy)
    updated = copy.deepcopy(world_policy)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(0.02 * torch.randn_like(p))
    engine.sync_weights(updated)
    after = engine.generate(prompts, greedy)
    reference = GenerateEngine.from_tokenizer(updated, world_tokenizer).generate(prompts, greedy)
    assert_same_answers(after, reference)
    assert after.completion_ids != before.completion_ids
    engine.sync_weights(world_policy)  # back to the policy for the other tests
    assert_same_answers(engine.generate(prompts, greedy),
                        GenerateEngine.from_tokenizer(world_policy, world_tokenizer).generate(
                            prompts, greedy))  # fmt: skip
    engine.close()  # releases the broadcast group, not the server (another engine started it)


def test_stopped_server_gives_a_clear_error_naming_the_url(server, prompts):
    from rollouts.vllm_server import ServerUnavailable

    url = server.url
    server.close()
    assert server.process.poll() is not None
    with pytest.raises(ServerUnavailable, match=f"vLLM server at {url} is unreachable"):
        server.generate(prompts, SamplingParams(max_new_tokens=4, temperature=0))
