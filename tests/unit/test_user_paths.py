"""The checks behind the one-line path errors: model directories (align.core.models) and output
locations (align.core.outputs). The command-line behaviour is in
tests/integration/test_user_errors.py."""

from __future__ import annotations

import json

import pytest

from align.core.models import check_model_dir, load_pretrained
from align.core.outputs import check_output_dir, check_output_file


def _model_dir(path, *files: str, config: str = "config.json"):
    path.mkdir()
    (path / config).write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}), "utf-8")
    for name in files:
        (path / name).write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("files", "config"),
    [
        (["model.safetensors"], "config.json"),
        (["model.safetensors.index.json", "model-00001-of-00002.safetensors"], "config.json"),
        (["adapter_model.safetensors"], "adapter_config.json"),  # a PEFT adapter (LoRA PPO)
    ],
    ids=["single", "sharded", "adapter"],
)
def test_safetensors_directories_pass(tmp_path, files, config):
    d = _model_dir(tmp_path / "m", *files, config=config)
    assert check_model_dir(d, "policy") == d


def test_pickle_only_directory_names_field_file_and_conversion(tmp_path):
    d = _model_dir(tmp_path / "m", "pytorch_model.bin")
    with pytest.raises(ValueError) as caught:
        check_model_dir(d, "critic")
    message = str(caught.value)
    assert message.startswith(f"critic: {d}: the weights are pytorch_model.bin (pickle)")
    assert "safetensors are required" in message
    assert f"t.LlamaForCausalLM.from_pretrained('{d}', use_safetensors=False)" in message
    assert "\n" not in message
    assert check_model_dir(d, "critic", weights=False) == d  # an engine loads them itself


@pytest.mark.parametrize(
    ("make", "error", "text"),
    [
        (lambda p: p, FileNotFoundError, "no such model directory"),
        (lambda p: (p.write_text("x"), p)[1], NotADirectoryError, "got a file"),
        (lambda p: (p.mkdir(), p)[1], ValueError, "no config.json"),
        (lambda p: _model_dir(p), ValueError, "no model weights"),
    ],
    ids=["missing", "file", "no-config", "no-weights"],
)
def test_bad_model_paths_name_the_field(tmp_path, make, error, text):
    path = make(tmp_path / "m")
    with pytest.raises(error, match=text) as caught:
        check_model_dir(path, "reference")
    assert str(caught.value).startswith(f"reference: {path}")


def test_load_pretrained_refuses_before_transformers_reads_the_pickle(tmp_path):
    """The pickle file is garbage: transformers would fail on it differently; the check wins."""
    from transformers import AutoModelForCausalLM

    d = _model_dir(tmp_path / "m", "pytorch_model.bin")
    (d / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="^policy: .*safetensors are required"):
        load_pretrained(AutoModelForCausalLM, d, "policy")


def test_load_pretrained_loads_safetensors(tmp_path, random_lm):
    import torch
    from transformers import AutoModelForCausalLM

    random_lm.save_pretrained(tmp_path / "lm")
    loaded = load_pretrained(AutoModelForCausalLM, tmp_path / "lm", "policy")
    for (name, a), (_, b) in zip(random_lm.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_output_dir_check_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "run"
    assert check_output_dir(target, "output_dir") == target
    assert list(tmp_path.iterdir()) == []  # no folder made, no probe file left


def test_output_dir_under_or_at_a_file(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match=f"^output_dir: {blocker}/run: {blocker} is a"):
        check_output_dir(blocker / "run", "output_dir")
    with pytest.raises(NotADirectoryError, match=f"^output_dir: {blocker} is a file"):
        check_output_dir(blocker, "output_dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_output_file_check(tmp_path):
    assert check_output_file(tmp_path / "new" / "kept.jsonl", "out") == tmp_path / "new/kept.jsonl"
    with pytest.raises(IsADirectoryError, match=f"^out: {tmp_path} is a directory"):
        check_output_file(tmp_path, "out")
    assert list(tmp_path.iterdir()) == []
