"""Logprobs, values, KL, advantages and losses are float32 whatever the models' dtype."""

from __future__ import annotations

import copy

import torch
from transformers import LlamaForSequenceClassification

from align.core import core_algos as ca
from align.ppo.trainer import ActorCritic, Experience, build_sequences


def test_bfloat16_models_give_float32_ppo_math(random_lm):
    actor = copy.deepcopy(random_lm).to(torch.bfloat16)
    config = random_lm.config.__class__(**{**random_lm.config.to_dict(), "num_labels": 1})
    torch.manual_seed(1)
    critic = LlamaForSequenceClassification(config).to(torch.bfloat16)
    model = ActorCritic(actor, critic)
    ids, attn, pos, mask = build_sequences([[5, 6, 7], [8]], [[20, 21, 22], [23, 24]], pad_id=0)
    exp = Experience(ids, attn, pos, mask, *([None] * 4))
    with torch.no_grad():
        exp.old_logprobs, entropy, exp.values = model(exp, 0.7, with_entropy=True)
        exp.ref_logprobs = exp.old_logprobs - 0.01
    assert exp.old_logprobs.dtype == entropy.dtype == exp.values.dtype == torch.float32
    kl = ca.kl_penalty(exp.old_logprobs, exp.ref_logprobs, exp.mask, "k3")
    rewards = ca.shape_rewards(torch.tensor([1.0, -1.0]), kl, exp.mask, 0.05, 5.0)
    advantages, returns = ca.gae(rewards, exp.values, exp.mask, 1.0, 0.95)
    logprobs, _, values = model(exp, 0.7)
    pg, _ = ca.policy_loss(logprobs, exp.old_logprobs, advantages, exp.mask)
    vf, _ = ca.value_loss(values, exp.values, returns, exp.mask)
    loss = ca.aggregate(pg, exp.mask) + ca.aggregate(vf, exp.mask)
    assert {t.dtype for t in (kl, rewards, advantages, returns, pg, vf, loss)} == {torch.float32}
    loss.backward()
    assert torch.isfinite(loss) and next(actor.parameters()).grad.dtype == torch.bfloat16
