"""The pieces of the ZeRO-3 loader that need no processes: reading slices of safetensors files
and matching a model's tensors with a checkpoint's keys."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from align.core.sharded_loading import checkpoint_tensors, plan_load, read_elements, read_tensor


@pytest.fixture
def stored(tmp_path):
    """Two files under an index, as a sharded checkpoint: fp32, bf16 and int64 tensors."""
    torch.manual_seed(0)
    tensors = {
        "a.weight": torch.randn(7, 5),
        "b.weight": torch.randn(3, 4, 2).to(torch.bfloat16),
        "c.count": torch.arange(11),
    }
    save_file({"a.weight": tensors["a.weight"]}, str(tmp_path / "part-1.safetensors"))
    second = {k: tensors[k] for k in ("b.weight", "c.count")}
    save_file(second, str(tmp_path / "part-2.safetensors"))
    weight_map = {"a.weight": "part-1.safetensors", "b.weight": "part-2.safetensors",
                  "c.count": "part-2.safetensors"}  # fmt: skip
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return tmp_path, tensors


def test_every_range_of_every_tensor_reads_as_the_flattened_tensor(stored):
    directory, tensors = stored
    index = checkpoint_tensors(directory)
    assert {k: v.shape for k, v in index.items()} == {k: tuple(t.shape) for k, t in tensors.items()}
    for name, tensor in tensors.items():
        flat = tensor.flatten()
        assert torch.equal(read_tensor(index[name]), tensor)
        for start in range(flat.numel()):
            for stop in (start + 1, flat.numel()):
                out = torch.empty(stop - start, dtype=tensor.dtype)
                read_elements(index[name], start, out)
                assert torch.equal(out, flat[start:stop])


def test_a_read_converts_to_the_partition_dtype(stored):
    directory, tensors = stored
    index = checkpoint_tensors(directory)
    out = torch.empty(5, dtype=torch.float32)  # bf16 stored, fp32 partition (no bf16 config)
    read_elements(index["b.weight"], 3, out)
    assert torch.equal(out, tensors["b.weight"].flatten()[3:8].float())
    half = torch.empty(4, dtype=torch.bfloat16)  # fp32 stored, bf16 partition
    read_elements(index["a.weight"], 30, half)
    assert torch.equal(half, tensors["a.weight"].flatten()[30:34].to(torch.bfloat16))


def test_a_truncated_file_is_an_error_naming_it(tmp_path):
    save_file({"w": torch.ones(100)}, str(tmp_path / "model.safetensors"))
    index = checkpoint_tensors(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-40])
    with pytest.raises(ValueError, match="truncated"):
        read_elements(index["w"], 0, torch.empty(100))


def _llama(num_labels: int | None = None):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    if num_labels is None:
        return AutoModelForCausalLM.from_config(config)
    config.num_labels = num_labels
    return AutoModelForSequenceClassification.from_config(config)


def test_a_classifier_from_a_causal_checkpoint_lacks_only_its_head(tmp_path):
    causal = _llama()
    causal.save_pretrained(tmp_path, safe_serialization=True)
    stored = checkpoint_tensors(tmp_path)
    plan = plan_load(_llama(num_labels=1), stored)
    assert plan.missing == ["score.weight"] and plan.body_missing == []
    assert plan.keys["model.layers.0.mlp.up_proj.weight"] == "model.layers.0.mlp.up_proj.weight"
    # tied: the output layer is the embedding, read once under its own name
    assert "lm_head.weight" not in stored and plan_load(causal, stored).missing == []


def test_a_checkpoint_without_the_base_prefix_matches_and_renamed_keys_do_not(tmp_path):
    causal = _llama()
    state = causal.state_dict()
    bare = {k.removeprefix("model."): v for k, v in state.items() if k != "lm_head.weight"}
    save_file(bare, str(tmp_path / "model.safetensors"))
    plan = plan_load(causal, checkpoint_tensors(tmp_path))
    assert plan.missing == [] and plan.keys["model.norm.weight"] == "norm.weight"
    renamed = {k.replace("mlp", "feed_forward"): v for k, v in bare.items()}
    save_file(renamed, str(tmp_path / "model.safetensors"))
    plan = plan_load(causal, checkpoint_tensors(tmp_path))
    assert plan.body_missing == [
        f"model.layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down")
    ]
