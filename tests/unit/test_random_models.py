"""The configs behind the random-init models of the architecture matrix (no weights built)."""

from __future__ import annotations

import pytest

from align.tiny.random_models import ARCHITECTURES, SHAPES, TIED_EMBEDDINGS, Shape, model_config

SPECIAL = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_tiny_shape_reads_the_same_through_every_config(architecture):
    """Whatever a config calls its sizes, transformers' common names read the tiny shape back."""
    config = model_config(architecture, SHAPES["tiny"], 300, SPECIAL)
    assert config.model_type == architecture
    text = config.get_text_config()
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (64, 2, 2)
    assert text.hidden_size // text.num_attention_heads >= 32  # vLLM's CPU attention needs it
    assert getattr(text, "head_dim", 32) == 32
    assert text.vocab_size == 300
    assert (text.pad_token_id, text.bos_token_id, text.eos_token_id) == (0, 1, 2)
    assert config.tie_word_embeddings is TIED_EMBEDDINGS[architecture]


def test_both_head_layouts_are_covered_and_a_shape_can_override():
    assert set(TIED_EMBEDDINGS) == set(ARCHITECTURES)
    assert set(TIED_EMBEDDINGS.values()) == {True, False}
    untied = Shape(64, 2, 2, 1, 128, tie_word_embeddings=False)
    assert model_config("qwen2", untied, 300, SPECIAL).tie_word_embeddings is False


def test_unknown_architecture_names_the_field():
    with pytest.raises(ValueError, match="architecture: expected one of llama, .*got 'bert'"):
        model_config("bert", SHAPES["tiny"], 300, SPECIAL)
