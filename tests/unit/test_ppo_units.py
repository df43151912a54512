"""PPO pieces: sequence layout, logprobs/values alignment, rewards, mixture, config."""

from __future__ import annotations

import math

import pytest
import torch

from align.core.mixture import MixtureSampler
from align.ppo.config import PPOConfig
from align.ppo.trainer import Experience, build_sequences, completion_logprobs, completion_values
from rm.functions import WeightedReward, combine_rewards
from rollouts.base import SamplingParams
from rollouts.hf_generate import GenerateEngine


def _experience(prompts, completions, pad=0):
    ids, attn, pos, mask = build_sequences(prompts, completions, pad)
    return Experience(ids, attn, pos, mask, None, None, None, None)


def test_build_sequences_layout():
    ids, attn, pos, mask = build_sequences([[5, 6, 7], [8]], [[9], [10, 11]], pad_id=0)
    # prompts left-padded to 3, completions right-padded to 2
    assert ids.tolist() == [[5, 6, 7, 9, 0], [0, 0, 8, 10, 11]]
    assert attn.tolist() == [[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert pos.tolist() == [[0, 1, 2, 3, 3], [0, 0, 0, 1, 2]]
    assert mask.tolist() == [[True, False], [True, True]]


def test_trainer_logprobs_equal_the_engines_sampling_logprobs(random_lm):
    """Old logprobs recomputed by the trainer on the padded layout match what the engine
    recorded while sampling: the layout (padding, positions, shift) is right."""
    engine = GenerateEngine(random_lm, pad_token_id=0, eos_token_ids=1)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [20]]
    batch = engine.generate(prompts, SamplingParams(max_new_tokens=9, temperature=0.8, seed=1), 2)
    exp = _experience(batch.prompt_ids, batch.completion_ids)
    with torch.no_grad():
        logprobs, entropy = completion_logprobs(random_lm, exp, 0.8, with_entropy=True)
    _, recorded, mask = batch.padded_completions(pad_id=0)
    assert torch.allclose(logprobs[mask], recorded[mask], atol=1e-4, rtol=0)
    assert entropy.shape == logprobs.shape and bool((entropy[mask] > 0).all())


def test_values_are_read_at_the_state_before_each_token():
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=0,
    )
    config.num_labels = 1
    critic = AutoModelForSequenceClassification.from_config(config).eval()
    exp = _experience([[5, 6, 7], [8]], [[9, 10], [11]])
    with torch.no_grad():
        values = completion_values(critic, exp)
        # row 1 alone, unpadded: tokens 8, 11; V for completion token 11 is read at token 8
        alone = critic.score(critic.model(input_ids=torch.tensor([[8, 11]])).last_hidden_state)
        full0 = critic.score(
            critic.model(input_ids=torch.tensor([[5, 6, 7, 9, 10]])).last_hidden_state
        )
    assert values.shape == (2, 2)
    assert values[1, 0].item() == pytest.approx(alone[0, 0, 0].item(), abs=1e-5)
    assert values[0].tolist() == pytest.approx(full0[0, 2:4, 0].tolist(), abs=1e-5)


def test_combine_rewards_weights_and_errors():
    def a(prompts, completions, **_):
        return [1.0, 2.0]

    def b(prompts, completions, tag, **_):
        return [10.0 if t == "x" else 0.0 for t in tag]

    total, parts = combine_rewards(
        [WeightedReward("a", a, 0.5), WeightedReward("b", b, 2.0)],
        ["p", "q"],
        ["c", "d"],
        {"tag": ["x", "y"]},
    )
    assert total.tolist() == [0.5 * 1 + 2 * 10, 0.5 * 2 + 0]
    assert parts["b"].tolist() == [10.0, 0.0]
    for bad, match in [
        ([1.0, None], "None/NaN/inf for samples \\[1\\]"),
        ([math.nan, 1.0], "samples \\[0\\]"),
        ([1.0], "returned 1 scores"),
    ]:
        with pytest.raises(ValueError, match=match):
            combine_rewards(
                [WeightedReward("bad", lambda bad=bad, **_: bad, 1.0)], ["p", "q"], ["c", "d"], {}
            )


def test_mixture_sampler_follows_weights_and_resumes():
    categories = ["a"] * 90 + ["b"] * 10
    sampler = MixtureSampler(categories, {"a": 1.0, "b": 3.0}, seed=0)
    draws = sampler.sample(20000)
    share_b = sum(categories[i] == "b" for i in draws) / len(draws)
    # expected 3/4 despite b holding 10% of the rows; binomial sd = sqrt(.75*.25/20000) = .0031
    assert abs(share_b - 0.75) < 0.013
    state = sampler.state_dict()
    after = sampler.sample(50)
    fresh = MixtureSampler(categories, seed=123)
    fresh.load_state_dict(state)
    assert fresh.sample(50) == after
    with pytest.raises(ValueError, match="unknown categories \\['c'\\]"):
        MixtureSampler(categories, {"c": 1.0})
    with pytest.raises(ValueError, match="empty"):
        MixtureSampler([])


def test_config_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("beta: 0.1\ntotal_steps: 7\ncategory_weights: {保险: 2.0}\n", encoding="utf-8")
    cfg = PPOConfig.from_sources(path, ["--beta", "0.2", "--kl_estimator=k3"])
    assert (cfg.beta, cfg.total_steps, cfg.kl_estimator) == (0.2, 7, "k3")
    assert cfg.category_weights == {"保险": 2.0}
    with pytest.raises(ValueError, match="unknown field 'betta' of PPOConfig; did you mean 'beta'"):
        PPOConfig.from_sources(path, ["--betta", "1"])
    with pytest.raises(ValueError, match="num_minibatches"):
        PPOConfig(rollout_batch_size=6, num_minibatches=4)
    with pytest.raises(ValueError, match="kl_estimator"):
        PPOConfig(kl_estimator="k4")
    with pytest.raises(ValueError, match="dual_clip"):
        PPOConfig(dual_clip=0.5)


def test_config_reads_exponent_floats_and_rejects_words():
    cfg = PPOConfig.from_sources(None, ["--actor_lr", "1e-4", "--beta", "1"])
    assert cfg.actor_lr == 1e-4 and isinstance(cfg.beta, float)
    with pytest.raises(ValueError, match="actor_lr: expected a number, got 'fast'"):
        PPOConfig.from_sources(None, ["--actor_lr", "fast"])


def test_estimator_config_checks():
    """What each advantage estimator needs is checked when the config is built (one line
    naming the field); a critic-free config with a policy needs no critic."""
    from align.ppo.config import missing_inputs
    from rm.spec import tiny_reward

    cfg = PPOConfig.from_sources(
        None, ["--advantage_estimator", "rloo", "--samples_per_prompt", "4"]
    )
    assert not cfg.uses_critic() and PPOConfig().uses_critic()
    with pytest.raises(ValueError, match="samples_per_prompt: advantage_estimator grpo .* got 1"):
        PPOConfig(advantage_estimator="grpo")
    with pytest.raises(ValueError, match="gamma: advantage_estimator dr_grpo .* expected 1"):
        PPOConfig(advantage_estimator="dr_grpo", samples_per_prompt=2, gamma=0.99)
    with pytest.raises(ValueError, match="critic_warmup_steps: advantage_estimator reinforce_pp"):
        PPOConfig(advantage_estimator="reinforce_pp", critic_warmup_steps=2)
    with pytest.raises(ValueError, match="advantage_estimator: expected one of"):
        PPOConfig.from_sources(None, ["--advantage_estimator", "ppo"])
    with pytest.raises(ValueError, match="loss_agg_mode"):
        PPOConfig.from_sources(None, ["--loss_agg_mode", "seq-sum"])
    PPOConfig(advantage_estimator="reinforce_pp", gamma=0.99)  # ungrouped: gamma is free
    given = dict(policy="p", prompts="x", eval_prompts="y", rewards=tiny_reward())
    gae = PPOConfig(**given)
    grpo = PPOConfig(**given, advantage_estimator="grpo", samples_per_prompt=2)
    assert [name for name, _ in missing_inputs(gae)] == ["critic"]
    assert missing_inputs(grpo) == []
