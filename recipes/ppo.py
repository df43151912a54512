"""PPO with actor, reference, critic and reward functions — the recipe form of `align ppo`.

Launch (one process, CPU or one GPU)::

    accelerate launch recipes/ppo.py --config recipes/configs/ppo_tiny.yaml

Several processes / DeepSpeed (the config files are in recipes/accelerate_configs/)::

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml --num_processes 8 \\
        recipes/ppo.py --config recipes/configs/ppo_7b_zero3.yaml

Any PPOConfig field can be overridden: ``--beta 0.1 --total_steps 300``. How this departs from
the XuanYuan reports: everything the reports leave open (KL estimator, clip values, whitening,
missing-EOS penalty, GAE defaults from DeepSpeed-Chat) is a documented config field; see
``align ppo --show_config``.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    # Imports after run_recipe has set up the quiet terminal: the libraries print as they load.
    from align.cli.app import run_recipe

    def load_class() -> type:
        from align.ppo.config import PPOConfig  # lazy: after the quiet set-up

        return PPOConfig

    def run(cfg) -> None:
        from align.ppo.run import run_ppo  # lazy: after the quiet set-up

        run_ppo(cfg)

    run_recipe("recipes/ppo.py", load_class, run, help=__doc__, args=argv)


if __name__ == "__main__":
    main()
