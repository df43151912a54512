"""Layer-by-layer weight export (trainer side, no vLLM): the units weights travel in, their
order and content against the whole-model export, and the metadata announced before sending."""

from __future__ import annotations

import copy

import pytest
import torch

from rollouts.weight_sync import (
    exported,
    layer_key,
    weight_chunks,
    weight_metadata,
    weight_units,
)


@pytest.mark.parametrize(
    "name,key",
    [
        ("model.layers.3.self_attn.q_proj.weight", "model.layers.3"),
        ("model.layers.12.mlp.down_proj.weight", "model.layers.12"),  # not "model.layers.1"
        ("transformer.h.0.attn.c_attn.weight", "transformer.h.0"),  # GPT-2
        ("gpt_neox.layers.5.attention.dense.bias", "gpt_neox.layers.5"),
        ("model.language_model.layers.2.mlp.w.weight", "model.language_model.layers.2"),
        ("model.layers.4.mlp.experts.7.w1", "model.layers.4"),  # outermost index: the layer
        ("model.embed_tokens.weight", "model.embed_tokens"),
        ("model.norm.weight", "model.norm"),
        ("lm_head.weight", "lm_head"),
        ("transformer.wpe.weight", "transformer.wpe"),
        ("model.fc1.weight", "model.fc1"),  # digits inside a name are not an index
    ],
)
def test_layer_key(name, key):
    assert layer_key(name) == key


def test_units_are_the_decoder_layers_and_the_modules_outside_them(random_lm):
    units = weight_units(random_lm)
    keys = [{layer_key(n) for n, _ in unit} for unit in units]
    assert keys == [
        {"model.embed_tokens"},
        {"model.layers.0"},
        {"model.layers.1"},
        {"model.norm"},
        {"lm_head"},
    ]
    assert [n for unit in units for n, _ in unit] == [n for n, _ in random_lm.named_parameters()]
    assert len(units[1]) == 9  # q k v o, gate up down, 2 norms: the whole layer in one unit


@pytest.fixture(scope="module")
def lora_lm(random_lm):
    """LoRA on attention, MLP and the LM head (a wrapper outside the decoder layers), with
    non-zero B so that merging changes the weights."""
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(
        copy.deepcopy(random_lm),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj", "lm_head"]),
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return peft


def test_lora_adapters_travel_with_their_base_weight(lora_lm):
    for unit in weight_units(lora_lm):
        names = [n for n, _ in unit]
        for name in names:
            if ".lora_A." in name:
                base = name.split(".lora_A.")[0] + ".base_layer.weight"
                assert base in names, (name, names)
    head = [u for u in weight_units(lora_lm) if any("lm_head" in n for n, _ in u)]
    assert len(head) == 1 and len(head[0]) == 3  # base weight, lora_A, lora_B together


@pytest.mark.parametrize("model", ["random_lm", "lora_lm"])
def test_chunks_add_up_to_the_whole_model_export(model, request):
    """Layer by layer gives the same (name, tensor) sequence as the whole-model export, and the
    metadata (announced before a broadcast, without gathering) describes it exactly."""
    model = request.getfixturevalue(model)
    chunks = [[(n, t.clone()) for n, t in chunk] for chunk in weight_chunks(model)]
    with exported(model) as whole:
        flat = [pair for chunk in chunks for pair in chunk]
        assert [n for n, _ in flat] == [n for n, _ in whole]
        for (_, a), (_, b) in zip(flat, whole):
            assert torch.equal(a, b)
    assert len(chunks) == 5  # embeddings, 2 layers, final norm, LM head
    assert weight_metadata(model) == [(n, t.dtype, tuple(t.shape)) for n, t in flat]
