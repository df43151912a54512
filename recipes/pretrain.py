"""Continued pretraining on bucketed documents with a dynamic category mixture per stage.

Launch (one process, CPU or one GPU)::

    accelerate launch recipes/pretrain.py --config recipes/configs/pretrain_tiny.yaml

Several processes / DeepSpeed ZeRO-3 (config files in recipes/accelerate_configs/)::

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml --num_processes 64 \\
        recipes/pretrain.py --config recipes/configs/pretrain_70b_zero3.yaml

Any ``PretrainConfig`` field can be overridden: ``--learning_rate 1e-5 --num_stages 4``.

Documents are composed into 2k/4k/8k/16k-token instances by the greedy multi-bucket strategy and
each optimizer step reads one bucket's batch (the same bucket on every process, constant tokens
per step), as in the XuanYuan2 report [S]. How this departs from it: the greedy algorithm is our
reconstruction (best-fit-decreasing, 10% padding threshold, pools of 10k documents) [P]; the
per-stage mixture controller (relative held-out loss, η 0.3, clamps 0.5-2×) is ours [P]; the
schedule is a linear warm-up then constant [P].

Checkpoints: ``output_dir/checkpoints/step-N/`` every ``save_every`` optimizer steps and at the end
of every stage (``save_every: 0``: at stage ends only). Each holds the model (``model/``, HF
safetensors + tokenizer), the accelerate state (model, optimizer, RNG states of every process),
and ``trainer_state.json`` (step, stage, sampler position in the stage, mixture controller,
held-out losses so far). A checkpoint is written to a temporary directory and renamed when
complete, so a crash never leaves half of one. Resume a stopped or killed run where it stood,
with the same config::

    accelerate launch recipes/pretrain.py --config recipes/configs/pretrain_tiny.yaml \\
        --resume_from latest            # or --resume_from runs/pretrain-tiny/checkpoints/step-10

The resumed run reaches the same weights and writes the same ``metrics.jsonl`` lines as one that
was never stopped (lines logged after the checkpoint by the stopped run are dropped). A fresh run
(no ``resume_from``) into an ``output_dir`` that already holds checkpoints is refused.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    # Imports after run_recipe has set up the quiet terminal: the libraries print as they load.
    from align.cli.app import run_recipe

    def load_class() -> type:
        from align.pretrain.run import PretrainConfig  # lazy: after the quiet set-up

        return PretrainConfig

    def run(cfg) -> None:
        from align.pretrain.run import run as pretrain  # lazy: after the quiet set-up

        summary = pretrain(cfg)
        before, after = summary["held_out_before"]["all"], summary["held_out_after"]["all"]
        print(
            f"held-out loss {before:.4f} -> {after:.4f} in {summary['steps']} steps; "
            f"final model: {summary['final']}"
        )

    run_recipe("recipes/pretrain.py", load_class, run, help=__doc__, args=argv)


if __name__ == "__main__":
    main()
