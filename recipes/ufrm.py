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

import argparse
import sys

from accelerate import PartialState

from align.ufrm.run import run
from rm.ufrm import UFRMConfig


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file of UFRMConfig fields")
    args, overrides = parser.parse_known_args(argv)
    summary = run(UFRMConfig.from_sources(args.config, overrides))
    if PartialState().is_main_process:
        print(f"final reward model: {summary['final']}")


if __name__ == "__main__":
    main(sys.argv[1:])
