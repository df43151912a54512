"""Trainer-side weight export (no vLLM needed): names, LoRA merging, the safetensors file."""

from __future__ import annotations

import torch

from rollouts.weight_sync import exported, load_saved_weights, save_weights


def test_plain_model_exports_its_own_parameters(random_lm):
    with exported(random_lm) as weights:
        names = [n for n, _ in weights]
        assert names == [n for n, _ in random_lm.named_parameters()]
        for (_, t), (_, p) in zip(weights, random_lm.named_parameters()):
            assert torch.equal(t, p)


def test_lora_is_merged_under_the_base_names_without_touching_the_trainer(random_lm):
    import copy

    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(random_lm)
    peft = get_peft_model(
        copy.deepcopy(random_lm),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]),
    )
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero B, so the merge changes the weights
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    layer = peft.base_model.model.model.layers[0].self_attn.q_proj
    scale = 8 / 4
    expected_q = base.model.layers[0].self_attn.q_proj.weight + scale * (
        layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    )
    with exported(peft) as weights:
        got = dict(weights)
        assert set(got) == {n for n, _ in base.named_parameters()}  # HF names, no adapters
        q = got["model.layers.0.self_attn.q_proj.weight"].clone()
        assert torch.equal(got["model.layers.0.mlp.up_proj.weight"],
                           base.model.layers[0].mlp.up_proj.weight)  # fmt: skip
    assert torch.allclose(q, expected_q, atol=1e-6, rtol=0)
    assert not torch.allclose(q, base.model.layers[0].self_attn.q_proj.weight, atol=1e-3)
    # the trainer's own base weight is untouched (never merged and unmerged in place)
    assert torch.equal(layer.base_layer.weight, base.model.layers[0].self_attn.q_proj.weight)


def test_saved_weights_round_trip_and_replace_atomically(random_lm, tmp_path):
    with exported(random_lm) as weights:
        path = save_weights(weights, tmp_path / "w")
        again = save_weights(weights, tmp_path / "w")  # overwrite in place
    assert path == again and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    loaded = dict(load_saved_weights(path))
    for name, p in random_lm.named_parameters():
        assert torch.equal(loaded[name], p)
