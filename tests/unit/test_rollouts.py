"""The transformers generate engine against a teacher-forced forward pass of the same model."""

from __future__ import annotations

import pytest
import torch

from rollouts.base import RolloutBatch, RolloutEngine, SamplingParams, left_pad
from rollouts.hf_generate import GenerateEngine
from tests.helpers import teacher_forced_logprobs

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [20], [30, 31]]


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_sampling_logprobs_equal_teacher_forced_forward(random_lm, temperature):
    engine = GenerateEngine(random_lm, pad_token_id=0, eos_token_ids=1)
    sampling = SamplingParams(max_new_tokens=12, temperature=temperature, seed=3)
    batch = engine.generate(PROMPTS, sampling, n=3)
    assert len(batch) == len(PROMPTS) * 3
    for prompt, completion, logprobs in zip(batch.prompt_ids, batch.completion_ids, batch.logprobs):
        oracle = teacher_forced_logprobs(
            random_lm, prompt, completion, sampling.logprob_temperature
        )
        assert torch.allclose(torch.tensor(logprobs), oracle, atol=1e-4, rtol=0)


def test_samples_come_back_grouped_per_prompt_in_order(random_lm):
    engine = GenerateEngine(random_lm, pad_token_id=0, eos_token_ids=1)
    batch = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, seed=0), n=4)
    assert batch.n == 4
    assert batch.prompt_ids == [p for p in PROMPTS for _ in range(4)]
    # greedy: every sample of a group equals the prompt's own single greedy answer
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    grouped = engine.generate(PROMPTS, greedy, n=2).completion_ids
    alone = [engine.generate([p], greedy).completion_ids[0] for p in PROMPTS]
    assert grouped == [c for c in alone for _ in range(2)]


def test_micro_batching_and_left_padding_do_not_change_greedy_answers(random_lm):
    greedy = SamplingParams(max_new_tokens=10, temperature=0)
    whole = GenerateEngine(random_lm, 0, 1).generate(PROMPTS, greedy)
    chunked = GenerateEngine(random_lm, 0, 1, batch_size=1).generate(PROMPTS, greedy)
    assert whole.completion_ids == chunked.completion_ids
    for a, b in zip(whole.logprobs, chunked.logprobs):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)


def test_completion_stops_at_eos_and_includes_it(random_lm):
    greedy = SamplingParams(max_new_tokens=10, temperature=0)
    free = GenerateEngine(random_lm, 0, 1).generate([PROMPTS[1]], greedy)
    assert free.finish_reasons == ["length"] and len(free.completion_ids[0]) == 10
    # Declare the token greedy decoding emits third to be the EOS: generation must stop there.
    stop = free.completion_ids[0][2]
    first = free.completion_ids[0].index(stop)
    stopped = GenerateEngine(random_lm, 0, [stop]).generate([PROMPTS[1]], greedy)
    assert stopped.finish_reasons == ["stop"]
    assert stopped.completion_ids[0] == free.completion_ids[0][: first + 1]
    assert torch.allclose(
        torch.tensor(stopped.logprobs[0]),
        torch.tensor(free.logprobs[0][: first + 1]),
        atol=1e-5,
        rtol=0,
    )


def test_checkpoint_generation_defaults_do_not_leak_into_sampling(random_lm):
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    engine = GenerateEngine(random_lm, 0, 1)
    clean = engine.generate(PROMPTS, greedy).completion_ids
    shipped = random_lm.generation_config
    random_lm.generation_config = type(shipped)(repetition_penalty=5.0, no_repeat_ngram_size=1)
    try:
        assert engine.generate(PROMPTS, greedy).completion_ids == clean
        assert random_lm.generation_config.repetition_penalty == 5.0  # restored afterwards
    finally:
        random_lm.generation_config = shipped


def test_engine_satisfies_protocol_and_validates(random_lm):
    engine = GenerateEngine(random_lm, 0, 1)
    assert isinstance(engine, RolloutEngine)
    with pytest.raises(ValueError, match="n: expected >= 1"):
        engine.generate(PROMPTS, SamplingParams(), n=0)
    with pytest.raises(ValueError, match="at least one token"):
        engine.generate([[]], SamplingParams())
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)


def test_left_pad_and_padded_completions():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    batch = RolloutBatch(
        [[1], [1]], [[7, 8, 9], [5]], [[-1.0, -2.0, -3.0], [-0.5]], ["stop", "length"]
    )
    c_ids, c_lp, c_mask = batch.padded_completions(pad_id=0)
    assert c_ids.tolist() == [[7, 8, 9], [5, 0, 0]]
    assert c_lp.tolist() == [[-1.0, -2.0, -3.0], [-0.5, 0.0, 0.0]]
    assert c_mask.tolist() == [[True, True, True], [True, False, False]]
    with pytest.raises(ValueError, match="one logprob per token"):
        RolloutBatch([[1]], [[7, 8]], [[-1.0]], ["stop"])
