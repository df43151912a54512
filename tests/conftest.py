"""Shared fixtures: offline mode, a tiny random causal LM, and the built tiny world (once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The default tiny world, built once per test session.

    ``ALIGN_TEST_TINY_DIR`` points at a directory to reuse between local runs (it is still
    checked against the cache key, so a stale build is rebuilt).
    """
    from align.tiny.build import build_tiny_world

    out = os.environ.get("ALIGN_TEST_TINY_DIR") or tmp_path_factory.mktemp("tiny") / "world"
    world, _ = build_tiny_world(Path(out))
    return world


@pytest.fixture(scope="session")
def world_tokenizer(tiny_world):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_world.tokenizer)


@pytest.fixture(scope="session")
def world_policy(tiny_world):
    """The tiny world's SFT policy as a transformers model (read-only: copy before changing)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_world.policy).eval()


@pytest.fixture(scope="session")
def random_lm():
    """A tiny random LlamaForCausalLM (vocab 300, pad 0, eos 1), seeded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()
