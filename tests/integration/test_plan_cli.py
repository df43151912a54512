"""``align plan`` through the command line (in-process): the shipped big configs with known
shapes, model directories, overrides, the JSON form, and one-line errors with exit status 2."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PPO_7B = "recipes/configs/ppo_7b_zero3.yaml"
PPO_70B = "recipes/configs/ppo_70b_lora_zero3.yaml"
ZERO3 = "recipes/accelerate_configs/zero3.yaml"
SHAPES_7B = ["--shape", "policy=llama-2-7b", "--shape", "critic=llama-2-7b",
             "--shape", "reward=llama-2-7b"]  # fmt: skip
VERDICT = re.compile(r"^(fits|does not fit) in [\d.,]+ GiB: peak [\d.,]+ [GM]iB per process")


def align(*args: str) -> tuple[int, str, str]:
    """``align ARGS`` in-process from the repository root: (exit status, stdout, stderr)."""
    from align.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    before = Path.cwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(["plan", *args])
            except SystemExit as done:
                code = done.code
            else:
                code = 0
    finally:
        os.chdir(before)
    return (0 if code is None else code), out.getvalue(), err.getvalue()


def test_the_shipped_7b_config_prints_its_table_and_a_verdict():
    code, out, err = align("--config", PPO_7B, "--accelerate_config", ZERO3, *SHAPES_7B)
    assert code == 0, err
    assert "8 processes, ZeRO-3, mixed precision bf16" in out
    assert "actor: 6,738,415,616 parameters" in out
    for item in ("weights: actor + critic", "optimizer states", "reference", "activations"):
        assert item in out
    # (6,738,415,616 actor + 6,607,347,712 critic) × 12 B / 8 processes = 18.64 GiB
    assert re.search(r"optimizer states\s*│\s*18\.64 GiB", out), out
    lines = out.strip().splitlines()
    assert VERDICT.match(lines[-1]), lines[-1]


def test_json_peak_is_the_resident_items_plus_the_largest_phase():
    code, out, err = align("--config", PPO_7B, "--zero_stage", "3", "--num_processes", "16",
                           "--device_memory", "141", "--json", *SHAPES_7B)  # fmt: skip
    assert code == 0, err
    plan = json.loads(out)
    always = sum(i["bytes"] for i in plan["items"] if i["phase"] == "always")
    phases = {p: always + sum(i["bytes"] for i in plan["items"] if i["phase"] == p)
              for p in ("generation", "scoring", "training")}  # fmt: skip
    assert plan["peak_bytes"] == pytest.approx(max(phases.values()))
    assert plan["device_memory_bytes"] == 141 * 2**30
    assert plan["fits"] == (plan["peak_bytes"] <= 141 * 2**30)


def test_overrides_change_the_plan():
    base = json.loads(align("--config", PPO_7B, "--json", *SHAPES_7B,
                            "--gradient_checkpointing", "false")[1])  # fmt: skip
    code, out, err = align("--config", PPO_7B, "--json", *SHAPES_7B,
                           "--micro_batch_size", "1", "--gradient_checkpointing")  # fmt: skip
    assert code == 0, err
    smaller = json.loads(out)

    def acts(plan):
        return next(i["bytes"] for i in plan["items"] if i["name"].startswith("activations"))

    assert acts(smaller) < acts(base) / 4


def test_the_70b_lora_config_has_no_reference_copy():
    shapes = [f"--shape={role}=llama-3-70b" for role in ("policy", "critic", "reward")]
    code, out, err = align("--config", PPO_70B, "--accelerate_config", ZERO3,
                           "--num_processes", "16", *shapes)  # fmt: skip
    assert code == 0, err
    assert "reference: the actor with its LoRA adapters disabled" in out
    assert "trainable" in out and "16 processes" in out
    assert VERDICT.match(out.strip().splitlines()[-1])


def test_a_pei_config_plans_its_ppo_runs():
    code, out, err = align("--config", "recipes/configs/pei_7b_zero3.yaml", *SHAPES_7B)
    assert code == 0, err
    assert out.startswith("PEI config")


def test_model_directories_are_counted_from_their_config(tiny_world):
    code, out, err = align("--config", "tiny", "--policy", str(tiny_world.policy),
                           "--critic", str(tiny_world.reward), "--json")  # fmt: skip
    assert code == 0, err
    plan = json.loads(out)
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained(tiny_world.policy)
    assert f"actor: {sum(p.numel() for p in real.parameters()):,} parameters" in plan["header"][1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [],
            r"^error: policy: /path/to/sft-7b is neither a model directory .* --shape policy=NAME",
        ),
        (["--shape", "policy=llama-9"], r"^error: policy: llama-9 is neither a model directory"),
        (["--shape", "actor=llama-2-7b"], r"^error: --shape actor=llama-2-7b: expected ROLE=NAME"),
    ],
)
def test_a_bad_model_path_or_shape_is_one_line_and_exit_2(args, message):
    code, out, err = align("--config", PPO_7B, *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err


def readme_plans() -> list[tuple[list[str], str]]:
    """``(arguments, shown output)`` of each ``align plan`` command in docs/ppo.md (the PPO
    guide): a fenced command block followed by the block showing its output."""
    import shlex

    blocks = re.findall(r"```(\w*)\n(.*?)```", (REPO / "docs" / "ppo.md").read_text("utf-8"), re.S)
    found = []
    for (kind, body), (_, shown) in zip(blocks, blocks[1:]):
        command = body.replace("\\\n", " ").strip()
        if kind == "bash" and command.startswith("align plan "):
            found.append((shlex.split(command)[2:], shown))
    return found


def test_the_readme_shows_what_align_plan_prints_for_the_shipped_configs():
    plans = readme_plans()
    assert {args[1] for args in (a for a, _ in plans)} >= {PPO_7B, PPO_70B}
    for args, shown in plans:
        code, out, err = align(*args)
        assert code == 0, err
        verdict = out.strip().splitlines()[-1]
        assert VERDICT.match(verdict)
        assert verdict in shown, (
            f"docs/ppo.md shows an old plan for `align plan {' '.join(args)}`; now: {verdict}"
        )
