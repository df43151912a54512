"""``align export``: which model a run, a checkpoint or a model path stands for, and which of its
run's settings travel with it (layouts built from empty files; nothing is loaded)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from align.export.locate import locate, model_dir_of, run_config_of
from align.export.write import check_out, generation_settings


def model(path: Path, weights: str = "model.safetensors") -> Path:
    """A model directory as far as file names go (config.json + weights)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}", encoding="utf-8")
    (path / weights).write_bytes(b"")
    return path


def run_dir(path: Path, config: str = "seed: 0\n") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(config, encoding="utf-8")
    (path / "metrics.jsonl").write_text("", encoding="utf-8")
    return path


def test_a_model_directory_is_itself(tmp_path):
    assert model_dir_of(model(tmp_path / "m")) == tmp_path / "m"


def test_a_ppo_run_is_its_highest_checkpoint_by_number_not_by_name(tmp_path):
    run = run_dir(tmp_path / "ppo")
    for step in (2, 10, 9):
        model(run / "checkpoints" / f"step-{step}" / "actor")
        model(run / "checkpoints" / f"step-{step}" / "critic")
    (run / "checkpoints" / ".step-11.tmp").mkdir()  # an interrupted save is no checkpoint
    assert model_dir_of(run) == run / "checkpoints" / "step-10" / "actor"
    assert model_dir_of(run / "checkpoints" / "step-2") == run / "checkpoints" / "step-2" / "actor"


def test_a_finished_run_is_its_final_model_before_any_checkpoint(tmp_path):
    sft = run_dir(tmp_path / "sft")
    model(sft / "checkpoint-8")
    model(sft / "final")
    assert model_dir_of(sft) == sft / "final"
    (tmp_path / "sft2").mkdir()
    for n in (4, 12):
        model(tmp_path / "sft2" / f"checkpoint-{n}")
    assert model_dir_of(tmp_path / "sft2") == tmp_path / "sft2" / "checkpoint-12"


def test_a_pretraining_run_without_final_is_its_latest_checkpoint_model(tmp_path):
    run = run_dir(tmp_path / "pretrain")
    model(run / "checkpoints" / "step-3" / "model")
    (run / "checkpoints" / "step-3" / "accelerate").mkdir()
    assert model_dir_of(run) == run / "checkpoints" / "step-3" / "model"


def test_a_ufrm_run_is_its_last_stage(tmp_path):
    run = tmp_path / "ufrm"
    model(run / "stage1")
    assert model_dir_of(run) == run / "stage1"
    model(run / "stage2")
    assert model_dir_of(run) == run / "stage2"


def test_a_pei_run_is_the_last_round_with_a_checkpoint(tmp_path):
    pei = run_dir(tmp_path / "pei", "ppo:\n  chat_format: ziya2\n")
    model(pei / "rm" / "model")
    model(pei / "round-0" / "ppo" / "checkpoints" / "step-5" / "actor")
    model(pei / "round-1" / "ppo" / "checkpoints" / "step-3" / "actor")
    (pei / "round-2" / "ppo").mkdir(parents=True)  # started, nothing saved yet
    assert model_dir_of(pei) == pei / "round-1" / "ppo" / "checkpoints" / "step-3" / "actor"
    # the round's own PPO config.yaml is not there: the PEI config's ppo.chat_format is read
    assert locate(pei).chat_format == "ziya2"


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda p: None, FileNotFoundError, "no such run, checkpoint or model directory"),
        (lambda p: p.write_text("x"), NotADirectoryError, "expected a run or checkpoint"),
        (lambda p: p.mkdir(), ValueError, "not a run, checkpoint or model directory"),
        (lambda p: model(p, "pytorch_model.bin"), ValueError, "safetensors are required"),
        (lambda p: (p / "checkpoints").mkdir(parents=True), ValueError, "not a run"),
    ],
)
def test_what_is_no_run_is_one_line_naming_it(tmp_path, make, error, words):
    path = tmp_path / "x"
    make(path)
    with pytest.raises(error, match=words) as caught:
        model_dir_of(path)
    assert str(caught.value).startswith(f"RUN: {path}") and "\n" not in str(caught.value)


def test_the_run_config_is_the_nearest_one_in_a_run_directory(tmp_path):
    (tmp_path / "config.yaml").write_text("chat_format: ziya2\n")  # no run beside it
    run = run_dir(tmp_path / "ppo", "chat_format: xuanyuan\ntemperature: 0.7\ntop_k: 0\n")
    actor = model(run / "checkpoints" / "step-1" / "actor")
    config, path = run_config_of(actor)
    assert path == (run / "config.yaml").resolve() and config["chat_format"] == "xuanyuan"
    source = locate(run)
    assert source.chat_format == "xuanyuan"
    assert source.sampling == {"temperature": 0.7, "top_k": 0}
    alone = model(tmp_path / "models" / "m")
    assert run_config_of(alone) == ({}, None)
    assert locate(alone).chat_format is None and locate(alone).sampling == {}


def test_generation_settings_carry_the_ids_and_the_run_sampling():
    tokenizer = SimpleNamespace(bos_token_id=1, eos_token_id=2, pad_token_id=None)
    sampling = {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "max_new_tokens": 48}
    assert generation_settings(tokenizer, sampling) == {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,  # no pad token: eos pads, as the runs do
        "max_new_tokens": 48,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
    }
    greedy = generation_settings(tokenizer, {"temperature": 0.0})
    assert "do_sample" not in greedy and "temperature" not in greedy
    assert generation_settings(tokenizer, {}) == {"bos_token_id": 1, "eos_token_id": 2,
                                                  "pad_token_id": 2}  # fmt: skip


def test_out_may_not_hold_the_model_or_a_non_empty_folder(tmp_path):
    actor = model(tmp_path / "run" / "checkpoints" / "step-1" / "actor")
    for bad in (actor, tmp_path / "run", tmp_path):
        with pytest.raises(ValueError, match="holds the model being exported"):
            check_out(bad, [actor], overwrite=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        check_out(tmp_path / "full", [actor], overwrite=False)
    assert check_out(tmp_path / "full", [actor], overwrite=True) == tmp_path / "full"
    assert check_out(tmp_path / "new" / "dir", [actor], overwrite=False) == tmp_path / "new" / "dir"
