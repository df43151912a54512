"""PEI-RLHF (XuanYuan3): PPO pre-training, then evaluate → attribute → re-mix → improve rounds.

The recipe form of ``align pei``. Launch (one process, CPU or one GPU)::

    accelerate launch recipes/pei.py --config recipes/configs/pei_7b_zero3.yaml

Several processes / DeepSpeed (every process trains; the main one evaluates and decides)::

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml --num_processes 8 \\
        recipes/pei.py --config recipes/configs/pei_7b_zero3.yaml

With no config and no model path it runs the tiny world (``align/configs/pei_tiny.yaml``); once a
model path is given, every input is required (no toy fallback). Any PEIConfig field
can be overridden: ``--rounds 3 --round_steps 50``. How this departs from the report: the
numbers it leaves open (tiers, step size, floor, β schedule, stop rule) are docs/methods.md's
defaults, each a config field (``align pei --show_config``); the reward is measured for RM
alignment on labelled pairs the user provides (``rm_pairs``; the tiny world's held-out pairs in the
tiny world).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    # Imports after run_recipe has set up the quiet terminal: the libraries print as they load.
    from align.cli.app import run_recipe

    def load_class() -> type:
        from align.pei.run import PEIConfig  # lazy: after the quiet set-up

        return PEIConfig

    def run(cfg) -> None:
        from align.pei.run import run_pei  # lazy: after the quiet set-up

        run_pei(cfg)

    run_recipe("recipes/pei.py", load_class, run, help=__doc__, args=argv)


if __name__ == "__main__":
    main()
