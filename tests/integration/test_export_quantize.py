"""``align export --quantize int8|int4`` on the tiny world's policy (hidden 128, MLP 352).

- the export loads in transformers (compressed-tensors decompresses it) and computes exactly
  what the float policy computes with round-to-nearest weights of an independent implementation
  (:func:`fake_quantize`, plain torch): logits within 1e-4;
- against the float policy itself the logits move by a bounded amount (int8 < int4) and the
  greedy next token mostly stays;
- the weights are stored packed (int32, 8 or 4 bits a value) and the file is smaller;
- an unknown ``--quantize`` or a group size that does not divide a layer: one line, exit 2.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from align.export.quantize import Scheme, fake_quantize, quantized_layers
from align.export.write import export_model
from tests.integration.test_export import run_align

#: quantize, group size, max |logit change| vs the float policy, least greedy agreement.
VARIANTS = {"int8": (8, None, 0.25, 0.95), "int4": (4, 32, 3.0, 0.7)}


@pytest.fixture(scope="module")
def exports(tiny_world, tmp_path_factory) -> dict[str, Path]:
    """The tiny policy exported as int8 (through the CLI) and int4 in groups of 32."""
    root = tmp_path_factory.mktemp("quantized")
    code, stdout, err = run_align(
        ["export", str(tiny_world.policy), "--out", str(root / "int8"), "--quantize", "int8"]
    )
    assert code == 0, err
    assert "quantized: int8 weights" in stdout
    export_model(tiny_world.policy, root / "int4", quantize="int4", group_size=32)
    return {"int8": root / "int8", "int4": root / "int4"}


@pytest.fixture(scope="module")
def ids(world_tokenizer) -> torch.Tensor:
    """Two held-out-like conversations, tokenized: [2, T]."""
    texts = ["本金18000元，年利率10%，按年复利计算，2年后本息合计多少元？",
             "请问以每股30元买入股票，以每股34元卖出，不计费用，收益率是多少？"]  # fmt: skip
    rows = [world_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = min(len(r) for r in rows)
    return torch.tensor([r[:width] for r in rows])


def rtn_reference(policy, scheme: Scheme):
    """The float policy with every quantized layer's weight rounded by :func:`fake_quantize`."""
    model = copy.deepcopy(policy)
    with torch.no_grad():
        for layer in quantized_layers(model).values():
            layer.weight.copy_(fake_quantize(layer.weight, scheme))
    return model


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_export_loads_and_computes_the_rounded_policy(name, exports, world_policy, ids):
    bits, group_size, max_change, agreement = VARIANTS[name]
    quantized = AutoModelForCausalLM.from_pretrained(exports[name]).eval()
    reference = rtn_reference(world_policy, Scheme(bits, group_size))
    with torch.no_grad():
        got, want, float_logits = (m(ids).logits for m in (quantized, reference, world_policy))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    change = (got - float_logits).abs().max().item()
    assert 0 < change < max_change, change
    same = (got.argmax(-1) == float_logits.argmax(-1)).float().mean().item()
    assert same >= agreement, same


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_weights_are_packed_and_the_file_is_smaller(name, exports, tiny_world):
    bits, group_size, *_ = VARIANTS[name]
    config = json.loads((exports[name] / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    assert config["format"] == "pack-quantized"
    weights = config["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"]) == (bits, group_size)
    assert "lm_head" in config["ignore"]
    with safe_open(exports[name] / "model.safetensors", "pt") as f:
        packed = f.get_tensor("model.layers.0.mlp.down_proj.weight_packed")
        scale = f.get_tensor("model.layers.0.mlp.down_proj.weight_scale")
        assert "model.layers.0.mlp.down_proj.weight" not in set(f.keys())
    assert packed.dtype == torch.int32
    assert packed.shape == (128, 352 * bits // 32)  # [out, in * bits / 32]
    assert scale.shape == (128, 1 if group_size is None else 352 // group_size)
    size = (exports[name] / "model.safetensors").stat().st_size
    assert size < 0.6 * (tiny_world.policy / "model.safetensors").stat().st_size


def test_int4_is_smaller_than_int8(exports):
    sizes = {k: (v / "model.safetensors").stat().st_size for k, v in exports.items()}
    assert sizes["int4"] < sizes["int8"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quantize", "int3"], "--quantize: 'int3': expected one of none, int8, int4"),
        (["--quantize", "int4", "--group_size", "128"], "--group_size: 128 does not divide"),
        (["--quantize", "int4", "--group_size", "0"], "--group_size: 0: expected a positive"),
    ],
)
def test_a_bad_quantization_is_one_line_and_exit_2(args, message, tiny_world, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_align(["export", str(tiny_world.policy), "--out", str(out), *args])
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()
