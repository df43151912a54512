"""Random-init causal LMs of any supported architecture, saved as model directories.

What the architecture matrix tests, the "your own model" chain of the README and the GPU
benchmark run on: a Hugging Face model directory (``config.json``, ``model.safetensors``, a
tokenizer carrying a chat template) that looks to every command exactly like a user's
checkpoint, but is built from a config in under a second, offline.

    from align.tiny.random_models import save_random_model
    save_random_model("qwen2", "models/qwen2-tiny")                     # hidden 64, 2 layers
    save_random_model("qwen2", "models/qwen2-0.5b", shape="qwen2-0.5b")  # the real shape

The tokenizer is a byte-level BPE trained on the tiny world's text (the tiny world's own
tokenizer when one is passed), with the ``xuanyuan-6b`` chat template, so the tiny world's
prompts and rule rewards work with every architecture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.core.chat_formats import get_chat_format
from align.tiny.build import CHAT_FORMAT, TinyWorldConfig, train_tokenizer
from align.tiny.world import generate

#: Architectures the matrix covers: transformers ``model_type`` names.
ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "phi3", "gpt_neox", "gpt2")

#: Whether the public checkpoints of an architecture tie the LM head to the input embeddings
#: (Qwen2-0.5B/1.5B, Qwen3-0.6B, Gemma 2 and GPT-2 do; Llama 2/3, Mistral, Phi-3 and Pythia do
#: not): the default of :attr:`Shape.tie_word_embeddings`, so the matrix covers both layouts.
TIED_EMBEDDINGS = {
    "llama": False,
    "qwen2": True,
    "qwen3": True,
    "mistral": False,
    "gemma2": True,
    "phi3": False,
    "gpt_neox": False,
    "gpt2": True,
}


@dataclass(frozen=True)
class Shape:
    """Sizes of a decoder-only model (``vocab_size`` None = the tokenizer's;
    ``tie_word_embeddings`` None = as the architecture's public checkpoints,
    :data:`TIED_EMBEDDINGS`)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int | None = None
    max_positions: int = 512
    tie_word_embeddings: bool | None = None


#: ``tiny`` is the test size (head_dim 32: vLLM's CPU attention needs >= 32); the others are the
#: public shapes of the named models (vocabulary included, so memory is realistic).
SHAPES = {
    "tiny": Shape(64, 2, 2, 1, 128),
    "small": Shape(256, 4, 8, 4, 688),
    "qwen2-0.5b": Shape(896, 24, 14, 2, 4864, vocab_size=151936, max_positions=32768),
    "qwen2-1.5b": Shape(1536, 28, 12, 2, 8960, vocab_size=151936, max_positions=32768),
}


def model_config(architecture: str, shape: Shape, vocab_size: int, special_ids: dict[str, int]):
    """The transformers config of ``architecture`` at ``shape``.

    Every config spells its sizes its own way (GPT-2's ``n_embd``, Gemma2's ``head_dim``, GPT-NeoX
    without key/value heads), which is why a per-architecture table is needed here and nowhere
    else: the rest of align reads models only through what transformers exposes.
    """
    from transformers import AutoConfig  # lazy: keeps `align --help` light

    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"architecture: expected one of {', '.join(ARCHITECTURES)}, got {architecture!r}"
        )
    s = shape
    head_dim = s.hidden_size // s.num_heads
    tied = TIED_EMBEDDINGS[architecture] if s.tie_word_embeddings is None else s.tie_word_embeddings
    common = dict(vocab_size=vocab_size, tie_word_embeddings=tied, **special_ids)
    decoder = dict(
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        intermediate_size=s.intermediate_size,
        max_position_embeddings=s.max_positions,
    )
    sizes: dict[str, Any] = {
        "llama": {**decoder, "num_key_value_heads": s.num_kv_heads},
        "qwen2": {**decoder, "num_key_value_heads": s.num_kv_heads},
        "qwen3": {**decoder, "num_key_value_heads": s.num_kv_heads, "head_dim": head_dim},
        "mistral": {**decoder, "num_key_value_heads": s.num_kv_heads, "head_dim": head_dim},
        "gemma2": {
            **decoder,
            "num_key_value_heads": s.num_kv_heads,
            "head_dim": head_dim,
            "query_pre_attn_scalar": head_dim,
            "sliding_window": s.max_positions,
        },
        "phi3": {
            **decoder,
            "num_key_value_heads": s.num_kv_heads,
            "original_max_position_embeddings": s.max_positions,
        },
        "gpt_neox": {**decoder, "rotary_pct": 1.0, "use_parallel_residual": True},
        "gpt2": {
            "n_embd": s.hidden_size,
            "n_layer": s.num_layers,
            "n_head": s.num_heads,
            "n_inner": s.intermediate_size,
            "n_positions": s.max_positions,
        },
    }[architecture]
    return AutoConfig.for_model(architecture, **common, **sizes)


def tiny_tokenizer(tokenizer_dir: str | os.PathLike[str] | None = None, vocab_size: int = 2048):
    """The tokenizer at ``tokenizer_dir``, else a byte-level BPE trained here on the tiny world's
    text (about a second) with the tiny world's chat template."""
    from transformers import AutoTokenizer  # lazy: keeps `align --help` light

    if tokenizer_dir is not None:
        return AutoTokenizer.from_pretrained(tokenizer_dir)
    fmt = get_chat_format(CHAT_FORMAT)
    texts = [
        fmt.render([*item.messages, {"role": "assistant", "content": item.chosen}])
        for item in generate(60, seed=0)
    ]
    return train_tokenizer(texts, TinyWorldConfig(vocab_size=vocab_size))


def save_random_model(
    architecture: str,
    directory: str | os.PathLike[str],
    shape: str | Shape = "tiny",
    *,
    seed: int = 0,
    tokenizer=None,
    dtype: str = "float32",
) -> Path:
    """Build a random-init ``AutoModelForCausalLM`` of ``architecture`` and save it (safetensors)
    with ``tokenizer`` (default :func:`tiny_tokenizer`) into ``directory``; returns the path."""
    import torch  # lazy: keeps `align --help` light
    from transformers import AutoModelForCausalLM

    size = SHAPES[shape] if isinstance(shape, str) else shape
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    special = {
        f"{name}_token_id": getattr(tokenizer, f"{name}_token_id")
        for name in ("pad", "bos", "eos")
    }
    config = model_config(architecture, size, size.vocab_size or len(tokenizer), special)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    out = Path(directory)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
