"""How a PPO run loads its models: dtype and attention kernel, the critic from any causal LM, and
no copy of the policy under LoRA (single process; ZeRO-3 in test_sharded_loading.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from align.ppo.config import PPOConfig
from align.ppo.run import build_trainer, load_models
from rm.spec import tiny_reward


def tiny_config(policy, world, out, **overrides) -> PPOConfig:
    values = dict(
        policy=str(policy),
        critic=str(world.reward),
        rewards=tiny_reward(),
        prompts=str(world.data("prompts")),
        eval_prompts=str(world.data("eval_prompts")),
        output_dir=str(out),
        rollout_batch_size=4,
        max_new_tokens=6,
        max_prompt_length=48,
        total_steps=1,
        micro_batch_size=4,
        actor_lr=1e-4,
        critic_lr=1e-4,
        save_every=0,
        eval_max_prompts=2,
        seed=3,
    )
    values.update(overrides)
    return PPOConfig(**values)


def paths_of(cfg: PPOConfig) -> dict:
    from pathlib import Path

    return {
        "policy": Path(cfg.policy),
        "critic": None if cfg.critic_from_policy else Path(cfg.critic),
        "reference": None,
    }


def finite_steps(out) -> list[dict]:
    import json

    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    steps = [r for r in rows if "loss/policy_avg" in r]
    assert steps, rows
    for r in steps:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, bad
    return steps


@pytest.fixture(scope="module", params=["gpt2", "gpt_neox"])
def other_policy(request, tmp_path_factory, world_tokenizer):
    """A tiny random GPT-2 or GPT-NeoX causal LM (no ``.model`` attribute) for the world's
    tokenizer, saved as safetensors."""
    from transformers import AutoConfig, AutoModelForCausalLM

    ids = dict(
        vocab_size=len(world_tokenizer),
        pad_token_id=world_tokenizer.pad_token_id,
        bos_token_id=world_tokenizer.bos_token_id,
        eos_token_id=world_tokenizer.eos_token_id,
    )
    sizes = {
        "gpt2": dict(n_embd=64, n_layer=2, n_head=2, n_positions=256),
        "gpt_neox": dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            max_position_embeddings=256,
        ),  # fmt: skip
    }[request.param]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(request.param, **sizes, **ids))
    out = tmp_path_factory.mktemp(request.param) / "policy"
    model.save_pretrained(out, safe_serialization=True)
    world_tokenizer.save_pretrained(out)
    return out


def test_critic_from_the_policy_for_any_architecture(tiny_world, other_policy, tmp_path):
    """GPT-2 and GPT-NeoX keep their body under another name than ``model``: the critic is
    the policy's own sequence-classification class with the policy's body and a seeded head."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(
        other_policy, tiny_world, tmp_path, critic=None, critic_from_policy=True,
        attn_implementation="eager",
    )  # fmt: skip
    actor, reference, critic, _ = load_models(paths_of(cfg), cfg)
    assert type(critic).__name__.endswith("ForSequenceClassification")
    policy = AutoModelForCausalLM.from_pretrained(other_policy)
    body = policy.base_model.state_dict()
    assert all(torch.equal(v, body[k]) for k, v in critic.base_model.state_dict().items())
    _, _, again, _ = load_models(paths_of(cfg), cfg)  # the head is seeded by cfg.seed
    assert torch.equal(again.score.weight, critic.score.weight)
    for model in (actor, reference, critic):
        assert model.config._attn_implementation == "eager"

    trainer = build_trainer(cfg)
    trainer.train()
    finite_steps(tmp_path)


def test_bfloat16_run_trains_with_finite_metrics(tiny_world, tmp_path):
    """``dtype: bfloat16`` loads every model in bf16; logprobs, values and losses stay float32."""
    from align.ppo.trainer import Experience, build_sequences

    cfg = tiny_config(tiny_world.policy, tiny_world, tmp_path, dtype="bfloat16", total_steps=2)
    trainer = build_trainer(cfg)
    models = trainer.model
    assert {p.dtype for p in models.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainer.reference.parameters()} == {torch.bfloat16}
    exp = Experience(*build_sequences([[5, 6, 7], [8]], [[9, 10], [11]], 0), *[None] * 4)
    with torch.no_grad():
        logprobs, _, values = models(exp, cfg.temperature)
    assert logprobs.dtype == values.dtype == torch.float32
    trainer.train()
    steps = finite_steps(tmp_path)
    assert len(steps) == 2 and steps[-1]["loss/value_avg"] > 0


def test_lora_makes_no_copy_of_the_policy(tiny_world, tmp_path, monkeypatch):
    """Under LoRA the reference is None (the actor with adapters disabled): no model is deep-
    copied. Without LoRA the reference is loaded from the policy directory, not copied."""
    from transformers import PreTrainedModel

    copied = []
    deepcopy = copy.deepcopy

    def recording_deepcopy(obj, *args, **kwargs):
        if isinstance(obj, PreTrainedModel):
            copied.append(type(obj).__name__)
        return deepcopy(obj, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", recording_deepcopy)
    lora = tiny_config(tiny_world.policy, tiny_world, tmp_path, lora_r=4)
    _, reference, _, _ = load_models(paths_of(lora), lora)
    assert reference is None
    plain = tiny_config(tiny_world.policy, tiny_world, tmp_path)
    actor, reference, _, _ = load_models(paths_of(plain), plain)
    assert copied == []
    weights = dict(actor.named_parameters())
    for name, p in reference.named_parameters():
        assert torch.equal(p, weights[name]) and p.data_ptr() != weights[name].data_ptr()
