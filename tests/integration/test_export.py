"""``align export`` and the chat format of saved tokenizers, on a tiny random Qwen2 (a model
directory as a user has one) and the tiny world's data files.

- the export of a PPO run is its last checkpoint's actor, bit for bit, with the run's chat
  template and sampling; of a LoRA run, the base with the adapter merged (the adapter's logits
  within 1e-5); a reward model keeps its score statistics;
- every tokenizer a run saves (PPO checkpoints, SFT, UFRM) renders conversations in the run's
  chat format, not the one the model came with;
- a path that is no run, an occupied ``--out`` or ``--out`` over the run: one line, exit 2.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from align.core.chat_formats import get_chat_format
from align.ppo.config import PPOConfig
from align.ppo.run import run_ppo
from align.tiny.build import TinyWorldConfig, write_data
from align.tiny.random_models import save_random_model

REPO = Path(__file__).resolve().parents[2]
MESSAGES = [
    {"role": "user", "content": "什么是ETF？"},
    {"role": "assistant", "content": "交易型开放式指数基金。"},
    {"role": "user", "content": "风险呢？"},
]
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def run_align(args: list[str]) -> tuple[int, str, str]:
    """``align ARGS`` in this process (:func:`align.cli.app.main`): exit status, stdout,
    stderr."""
    from align.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as done:
            code = 0 if done.code is None else done.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> Path:
    """``qwen2/`` (random, xuanyuan-6b template) and ``data/*.jsonl`` (4 rows a category)."""
    root = tmp_path_factory.mktemp("own")
    save_random_model("qwen2", root / "qwen2")
    counts = dict(sft_per_category=4, prefs_per_category=4, rl_prompts_per_category=4,
                  eval_per_category=2)  # fmt: skip
    write_data(root / "data", TinyWorldConfig(**counts))
    return root


def ppo(own: Path, out: Path, **changes) -> Path:
    """A short PPO run on ``own`` (critic from the policy, the tiny rule as reward)."""
    values = dict(
        policy=str(own / "qwen2"),
        critic_from_policy=True,
        rewards=[{"type": "rule", "rule": "tiny"}],
        prompts=str(own / "data" / "prompts.jsonl"),
        eval_prompts=str(own / "data" / "eval_prompts.jsonl"),
        output_dir=str(out),
        rollout_batch_size=4,
        micro_batch_size=4,
        max_new_tokens=8,
        max_prompt_length=64,
        eval_max_prompts=4,
        total_steps=1,
    )
    run_ppo(PPOConfig(**{**values, **changes}))
    return out


@pytest.fixture(scope="module")
def full_run(own, tmp_path_factory) -> Path:
    """Two steps, a checkpoint after each, in the xuanyuan format, a learning rate that moves."""
    out = tmp_path_factory.mktemp("ppo") / "run"
    return ppo(own, out, chat_format="xuanyuan", total_steps=2, save_every=1, actor_lr=1e-3)


@pytest.fixture(scope="module")
def lora_run(own, tmp_path_factory) -> Path:
    """One LoRA step with a learning rate that moves the adapters far from zero."""
    return ppo(own, tmp_path_factory.mktemp("lora") / "run", lora_r=8, actor_lr=1e-2)


@torch.no_grad()
def logits(model, tokenizer) -> torch.Tensor:
    """[1, T, V] logits of a fixed conversation."""
    text = get_chat_format("xuanyuan-6b").render(MESSAGES, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return model.eval()(ids).logits


def load(directory: Path):
    return AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True)


def assert_renders_as(tokenizer, name: str) -> None:
    """The tokenizer's template renders ``MESSAGES`` exactly as chat format ``name`` does."""
    fmt = get_chat_format(name)
    for prompt in (False, True):
        text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=prompt)
        assert text == fmt.render(MESSAGES, add_generation_prompt=prompt)


def no_pickles(directory: Path) -> None:
    found = [p.name for p in directory.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    assert not found, found


# --------------------------------------------------------------------------- full model


def test_a_ppo_run_exports_its_last_actor_with_its_chat_format_and_sampling(
    own, full_run, tmp_path
):
    out = tmp_path / "export"
    code, stdout, err = run_align(["export", str(full_run), "--out", str(out)])
    assert code == 0, err
    assert "step-2" in stdout and "xuanyuan" in stdout
    no_pickles(out)
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= files
    assert {"tokenizer.json", "tokenizer_config.json"} <= files

    tokenizer = AutoTokenizer.from_pretrained(out)
    exported = logits(load(out), tokenizer)
    checkpoints = full_run / "checkpoints"
    assert torch.equal(exported, logits(load(checkpoints / "step-2" / "actor"), tokenizer))
    # it is the trained actor of the last step, not an earlier one nor the starting policy
    for other in (checkpoints / "step-1" / "actor", own / "qwen2"):
        assert (exported - logits(load(other), tokenizer)).abs().max() > 1e-4

    # the run's chat format, not the xuanyuan-6b template the model came with
    assert_renders_as(tokenizer, "xuanyuan")
    assert_renders_as(AutoTokenizer.from_pretrained(checkpoints / "step-1" / "actor"), "xuanyuan")
    assert_renders_as(AutoTokenizer.from_pretrained(own / "qwen2"), "xuanyuan-6b")

    generation = GenerationConfig.from_pretrained(out)
    defaults = PPOConfig(policy="p")  # the sampling fields the run left at their defaults
    assert generation.eos_token_id == tokenizer.eos_token_id
    assert generation.pad_token_id == tokenizer.pad_token_id
    assert generation.do_sample and generation.max_new_tokens == 8
    assert (generation.temperature, generation.top_p, generation.top_k) == (
        defaults.temperature,
        defaults.top_p,
        defaults.top_k,
    )


# --------------------------------------------------------------------------- LoRA


def test_a_lora_run_exports_the_merged_model_with_the_adapter_logits(own, lora_run, tmp_path):
    from peft import PeftModel

    from align.export.write import export_model

    actor = lora_run / "checkpoints" / "step-1" / "actor"
    assert (actor / "adapter_config.json").is_file()  # what PPO saves under LoRA
    done = export_model(lora_run, tmp_path / "merged")
    assert done.base_model == own / "qwen2" and done.chat_format == "hf"
    assert not (done.out / "adapter_config.json").exists()
    no_pickles(done.out)

    tokenizer = AutoTokenizer.from_pretrained(done.out)
    merged = logits(load(done.out), tokenizer)
    adapter = logits(PeftModel.from_pretrained(load(own / "qwen2"), actor), tokenizer)
    base = logits(load(own / "qwen2"), tokenizer)
    assert (merged - adapter).abs().max() < 1e-5
    assert (merged - base).abs().max() > 1e-3  # the adapters changed the model
    assert_renders_as(tokenizer, "xuanyuan-6b")  # hf: the policy's own template


# --------------------------------------------------------------------------- errors


def test_what_cannot_be_exported_is_one_line_and_exit_2(own, full_run, tmp_path):
    cases = [
        ([str(tmp_path / "nope")], "RUN: "),
        ([str(own / "data")], "not a run, checkpoint or model directory"),
        ([str(full_run), "--chat_format", "chatml"], "unknown chat format 'chatml'"),
    ]
    for args, words in cases:
        code, _, err = run_align(["export", *args, "--out", str(tmp_path / "out")])
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    code, _, err = run_align(["export", str(full_run), "--out", str(occupied)])
    assert code == 2 and "pass --overwrite" in err and (occupied / "keep.txt").is_file()
    code, _, err = run_align(["export", str(full_run), "--out", str(full_run), "--overwrite"])
    assert code == 2 and "holds the model being exported" in err
    assert (full_run / "checkpoints" / "step-2" / "actor").is_dir()
    code, _, err = run_align(["export", str(full_run), "--out", str(occupied), "--overwrite"])
    assert code == 0, err
    assert not (occupied / "keep.txt").exists() and (occupied / "model.safetensors").is_file()


# --------------------------------------------------------------------------- saved tokenizers


def test_sft_saves_the_tokenizer_in_the_run_chat_format(own, tmp_path):
    sft = own / "data" / "sft.jsonl"
    code, _, err = run_align([
        "sft", "--config", str(REPO / "recipes/configs/sft_tiny.yaml"),
        "--model", str(own / "qwen2"), "--train_data", str(sft), "--eval_data", str(sft),
        "--chat_format", "xuanyuan", "--epoch_size", "8", "--num_train_epochs", "1",
        "--output_dir", str(tmp_path / "sft"),
    ])  # fmt: skip
    assert code == 0, err
    assert_renders_as(AutoTokenizer.from_pretrained(tmp_path / "sft" / "final"), "xuanyuan")
    code, _, err = run_align(["export", str(tmp_path / "sft"), "--out", str(tmp_path / "out")])
    assert code == 0, err
    assert_renders_as(AutoTokenizer.from_pretrained(tmp_path / "out"), "xuanyuan")
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert "temperature" not in generation  # SFT samples nothing: only the special ids


def test_ufrm_saves_the_tokenizer_in_the_run_chat_format_and_exports_its_stats(own, tmp_path):
    code, _, err = run_align([
        "rm", "train", "--model", str(own / "qwen2"),
        "--train_data", str(own / "data" / "prefs.jsonl"), "--chat_format", "xuanyuan",
        "--num_train_epochs", "1", "--max_length", "128", "--gradient_checkpointing", "false",
        "--output_dir", str(tmp_path / "rm"),
    ])  # fmt: skip
    assert code == 0, err
    assert_renders_as(AutoTokenizer.from_pretrained(tmp_path / "rm" / "stage1"), "xuanyuan")
    code, _, err = run_align(["export", str(tmp_path / "rm"), "--out", str(tmp_path / "out")])
    assert code == 0, err
    stats = "score_stats.json"
    assert (tmp_path / "out" / stats).read_bytes() == (tmp_path / "rm/stage1" / stats).read_bytes()
    assert not (tmp_path / "out" / "generation_config.json").exists()  # a reward model
    assert_renders_as(AutoTokenizer.from_pretrained(tmp_path / "out"), "xuanyuan")
