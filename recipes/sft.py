"""Answer-only SFT with per-category loss and a dynamic data mix, on TRL's ``SFTTrainer``.

Launch (one process, CPU or one GPU)::

    accelerate launch recipes/sft.py --config recipes/configs/sft_tiny.yaml

Several processes / DeepSpeed ZeRO-3 (config files in recipes/accelerate_configs/)::

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml --num_processes 8 \\
        recipes/sft.py --config recipes/configs/sft_7b_zero3.yaml

Any field of ``SFTRecipeConfig`` (ours or TRL's ``SFTConfig``) can be overridden:
``--learning_rate 1e-5 --general_finance_ratio 4``. The loss covers each assistant reply and its
terminator only (docs/methods.md §6 [S]); the per-category held-out loss is logged each epoch and,
with ``dynamic_mix``, moves the category weights the next epoch is drawn with. How this departs from
the XuanYuan reports: the controller (relative held-out loss, η 0.3, clamps 0.5-2×) and the held-out
split are ours [P]; the reports give only the 4 : 1 general : finance mix [S].
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    # Imports after run_recipe has set up the quiet terminal: the libraries print as they load.
    from align.cli.app import run_recipe

    def load_class() -> type:
        from align.sft.run import SFTRecipeConfig  # lazy: after the quiet set-up

        return SFTRecipeConfig

    def run(cfg) -> None:
        from align.sft.run import run as sft  # lazy: after the quiet set-up

        summary = sft(cfg)
        before, after = summary["held_out_before"]["loss"], summary["held_out_after"]["loss"]
        print(f"held-out loss {before:.4f} -> {after:.4f}; final model: {summary['final']}")

    run_recipe("recipes/sft.py", load_class, run, help=__doc__, args=argv)


if __name__ == "__main__":
    main()
