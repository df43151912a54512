"""The actor's gradient of one PPO minibatch in every ``loss_agg_mode``, saved by the main
process. Run by tests/integration/test_ppo_estimators.py as one process and under
``accelerate launch`` with two: the two must agree.

    python agg_invariance_worker.py POLICY PROMPTS EVAL_PROMPTS OUTPUT_DIR GRADS_FILE
"""

from __future__ import annotations

import sys

import torch

from align.core.core_algos import LOSS_AGG_MODES
from align.ppo.config import PPOConfig
from align.ppo.run import build_trainer
from rm.spec import tiny_reward


def main(policy: str, prompts: str, eval_prompts: str, out: str, grads_file: str) -> None:
    cfg = PPOConfig(
        policy=policy,
        rewards=tiny_reward(),
        prompts=prompts,
        eval_prompts=eval_prompts,
        output_dir=out,
        # top_k 1 samples deterministically (both launches draw the same answers), so a group's
        # answers would be the same: an ungrouped estimator, whitened over both processes
        advantage_estimator="reinforce_pp",
        rollout_batch_size=8,
        samples_per_prompt=1,
        top_k=1,
        max_new_tokens=10,
        micro_batch_size=2,
        beta=0.0,  # no KL: the advantages do not depend on float noise in the logprobs
        clip_eps_high=0.28,
        tis_cap=2.0,
        total_steps=1,
        seed=7,
    )
    trainer = build_trainer(cfg)
    index = trainer._my_share(trainer.sampler.sample(cfg.rollout_batch_size))
    rows = [trainer.prompts[i] for i in index]
    exp, _ = trainer.make_experience(rows, [trainer.prompt_ids[i] for i in index], {})
    trainer.compute_advantages(exp)
    trainer.model.train()
    actor = trainer.accelerator.unwrap_model(trainer.model).actor
    grads = {}
    for mode in LOSS_AGG_MODES:
        trainer.cfg.loss_agg_mode = mode
        trainer._accumulate_gradients(exp)  # the micro-batches of 2 rows, all-reduced
        grads[mode] = torch.cat(
            [p.grad.flatten() for p in actor.parameters() if p.grad is not None]
        )
        trainer.optimizer.zero_grad()
    if trainer.accelerator.is_main_process:
        torch.save(grads, grads_file)


if __name__ == "__main__":
    main(*sys.argv[1:6])
