"""PPO with actor, reference, critic and reward functions — the recipe form of `align ppo`.

Launch (one process, CPU or one GPU)::

    accelerate launch recipes/ppo.py --config recipes/configs/ppo_tiny.yaml

Several processes / DeepSpeed (the config files are in recipes/accelerate_configs/)::

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml --num_processes 8 \\
        recipes/ppo.py --config recipes/configs/ppo_7b_zero3.yaml

Any PPOConfig field can be overridden: ``--beta 0.1 --total_steps 300``. How this departs from
the XuanYuan reports: everything the reports leave open (KL estimator, clip values, whitening,
missing-EOS penalty, GAE defaults from DeepSpeed-Chat) is a documented config field; see
``align ppo --show-config``.
"""

from __future__ import annotations

import argparse
import sys

from align.ppo.config import PPOConfig
from align.ppo.run import run_ppo


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file of PPOConfig fields")
    args, overrides = parser.parse_known_args(argv)
    run_ppo(PPOConfig.from_sources(args.config, overrides))


if __name__ == "__main__":
    main(sys.argv[1:])
