"""Sharded loading under DeepSpeed ZeRO-3 with 2 CPU processes: no process holds a whole model.

One launch of ``zero3_probe.py`` (``accelerate launch``, ZeRO-3, fp32) checks that a partitioned
load equals the checkpoint (Llama) and that a critic built from a GPT-2 policy equals transformers'
unsharded load with the same seed, then trains ``align ppo`` for 2 steps on a 55 M-parameter
policy (actor and reference from its directory; the tiny world's critic and reward model),
measuring the resident memory each load adds against a plain ``from_pretrained`` of the same
model, and saves a checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ZERO3_FP32

PROBE = Path(__file__).with_name("zero3_probe.py")
#: The acceptance bound: a process's load adds at most this share of an unsharded load.
MAX_SHARE = 0.65


def save_lm(out: Path, config, tokenizer) -> Path:
    """A random causal LM built from ``config`` (seeded), saved as safetensors with
    ``tokenizer``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def special_ids(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


@pytest.fixture(scope="module")
def mid_policy(tmp_path_factory, world_tokenizer) -> Path:
    """55.4 M parameters: hidden 512, 14 layers, MLP 1792, tied embeddings (222 MB in fp32)."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=512,
        intermediate_size=1792,
        num_hidden_layers=14,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        **special_ids(world_tokenizer),
    )
    return save_lm(tmp_path_factory.mktemp("mid") / "policy", config, world_tokenizer)


@pytest.fixture(scope="module")
def gpt2_policy(tmp_path_factory, world_tokenizer) -> Path:
    from transformers import GPT2Config

    config = GPT2Config(
        n_embd=64, n_layer=2, n_head=2, n_positions=256, **special_ids(world_tokenizer)
    )
    return save_lm(tmp_path_factory.mktemp("gpt2") / "policy", config, world_tokenizer)


def run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TORCH_EXTENSIONS_DIR": os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions")
        ),
    }
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    errors = [line for line in done.stderr.splitlines() if "Error" in line]
    assert done.returncode == 0, "\n".join(errors[-20:]) + done.stderr[-4000:]
    return done


def ppo_args(world, policy: Path, out: Path) -> list[str]:
    values = dict(
        policy=policy,
        critic=world.reward,
        rewards=world.reward,
        prompts=world.data("prompts"),
        eval_prompts=world.data("eval_prompts"),
        output_dir=out,
        rollout_batch_size=2,
        max_prompt_length=16,
        max_new_tokens=4,
        total_steps=2,
        micro_batch_size=1,
        actor_lr=1e-5,
        critic_lr=1e-5,
        save_every=0,
        eval_max_prompts=2,
        seed=3,
    )
    return [item for k, v in values.items() for item in (f"--{k}", str(v))]


def unsharded_head_model(directory: Path, seed: int) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(directory, num_labels=1)
    return dict(model.named_parameters())


@pytest.mark.slow
def test_zero3_loads_partitioned_then_trains_and_saves(
    tiny_world, mid_policy, gpt2_policy, tmp_path
):
    pytest.importorskip("deepspeed")
    out = tmp_path / "probe"
    out.mkdir()
    run([sys.executable, str(PROBE), "unsharded", str(out), str(mid_policy)], timeout=300)
    unsharded = json.loads((out / "unsharded.json").read_text())
    config = tmp_path / "zero3_fp32.yaml"
    config.write_text(ZERO3_FP32)
    checks = tmp_path / "checks.json"
    checks.write_text(
        json.dumps({"llama": ["causal", str(tiny_world.policy), 0],
                    "gpt2_critic": ["seqcls", str(gpt2_policy), 7]})
    )  # fmt: skip
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    run(
        [*launch, "--num_processes", "2", str(PROBE), "zero3", str(out), str(checks),
         *ppo_args(tiny_world, mid_policy, tmp_path / "run")],
        timeout=900,
    )  # fmt: skip

    # a partitioned load is the checkpoint, exactly; a critic from a GPT-2 policy is the model
    # transformers builds unsharded, its fresh head included (same seed)
    gathered = load_file(out / "gathered-llama.safetensors")
    stored = load_file(tiny_world.policy / "model.safetensors")
    assert gathered.keys() == stored.keys()
    assert all(torch.equal(gathered[k], stored[k]) for k in stored)
    critic = load_file(out / "gathered-gpt2_critic.safetensors")
    expected = unsharded_head_model(gpt2_policy, seed=7)
    assert critic.keys() == expected.keys() and "score.weight" in critic
    assert all(torch.equal(critic[k], expected[k].detach()) for k in expected)

    # every load of the run was partitioned and, for the 55 M-parameter ones, added at most
    # 0.65 of what a plain load adds (half the weights is 0.5: each process holds its half)
    for rank in (0, 1):
        loads = json.loads((out / f"rank-{rank}.json").read_text())
        assert [(r["field"], r["class"]) for r in loads] == [
            ("model", "AutoModelForSequenceClassification"),  # the reward model
            ("policy", "AutoModelForCausalLM"),  # actor
            ("policy", "AutoModelForCausalLM"),  # reference
            ("critic", "AutoModelForSequenceClassification"),
        ]
        assert all(r["partitioned"] for r in loads)
        for r in loads[1:3]:
            share = r["added_mb"] / unsharded["causal"]
            print(f"rank {rank}: load +{r['added_mb']:.0f} MB, unsharded +{unsharded['causal']:.0f}"
                  f" MB ({share:.2f})")  # fmt: skip
            assert share <= MAX_SHARE, (rank, r, unsharded)

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    steps = [r for r in rows if "loss/policy_avg" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(v) for r in steps for v in r.values() if isinstance(v, float))
    stored_numel = sum(t.numel() for t in load_file(mid_policy / "model.safetensors").values())
    assert rows[0]["params/actor_total"] == stored_numel  # counted whole, not as a partition
    ckpt = tmp_path / "run" / "checkpoints" / "step-2"
    actor = load_file(ckpt / "actor" / "model.safetensors")
    assert actor["model.layers.13.mlp.down_proj.weight"].shape == (512, 1792)  # gathered
    assert (ckpt / "critic" / "model.safetensors").is_file()


@pytest.mark.slow
def test_zero3_lora_run_with_a_reward_model_trains(tiny_world, tmp_path):
    """The shipped ZeRO-3 config (bf16) with LoRA, the critic from the policy and a reward model:
    the adapters keep the partitions' dtype (DeepSpeed's ZeRO-3 optimizer needs one), the
    reward model scores inside its frozen engine, and the reference is the actor with its
    adapters disabled (KL 0 before the first update)."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "lora"
    args = ppo_args(tiny_world, tiny_world.policy, out)
    args[args.index("--critic") : args.index("--critic") + 2] = ["--critic_from_policy", "true"]
    zero3 = Path(__file__).resolve().parents[2] / "recipes/accelerate_configs/zero3.yaml"
    run(
        [sys.executable, "-m", "align.cli", "ppo", *args, "--lora_r", "4", "--rollout_batch_size",
         "4", "--num_processes", "2", "--accelerate_config", str(zero3)],
        timeout=600,
    )  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    steps = [r for r in rows if "loss/policy_avg" in r]
    assert len(steps) == 2 and steps[0]["objective/kl"] == 0.0
    assert all(math.isfinite(v) for r in steps for v in r.values() if isinstance(v, float))
    assert 0 < rows[0]["params/actor_trainable"] < rows[0]["params/actor_total"] / 10
    assert (out / "checkpoints" / "step-2" / "actor").is_dir()
