"""UFRM reward model, two stages (BT + inverse-RL + SimCSE) — the recipe form of `align rm train`.

Launch (one process, CPU or one GPU)::

    accelerate launch recipes/ufrm.py --config recipes/configs/ufrm_tiny.yaml

Several processes / DeepSpeed: ``accelerate launch --config_file
recipes/accelerate_configs/zero2.yaml --num_processes 8 recipes/ufrm.py --config YAML``.

Any UFRMConfig field (ours or TRL's ``RewardConfig``) can be overridden: ``--irl_weight 0
--cl_weight 0 --learning_rate 5e-5``. Stage 1 trains on ``train_data`` (general preferences)
into ``output_dir/stage1``; with ``stage2_data`` (financial) stage 2 starts from stage 1, head
included, into ``output_dir/stage2``. How this departs from the XuanYuan3 report: the loss
weights (λ_IRL 0.5, λ_CL 0.1), the SimCSE representation (dropout on the head input, a linear
projection, τ 0.05), the stage-2 learning rate (0.5×) and replay share are our defaults [P].
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    # Imports after run_recipe has set up the quiet terminal: the libraries print as they load.
    from align.cli.app import run_recipe

    def load_class() -> type:
        from rm.ufrm import UFRMConfig  # lazy: after the quiet set-up

        return UFRMConfig

    def run(cfg) -> None:
        from accelerate import PartialState  # lazy: after the quiet set-up

        from align.ufrm.run import run as train  # lazy: after the quiet set-up

        summary = train(cfg)
        if PartialState().is_main_process:
            print(f"final reward model: {summary['final']}")

    run_recipe("recipes/ufrm.py", load_class, run, help=__doc__, args=argv)


if __name__ == "__main__":
    main()
