"""Small builders shared by several test files."""

from __future__ import annotations

import torch


def random_reward_model(tokenizer, pad_token_id: int | None = None):
    """A tiny seeded ``LlamaForSequenceClassification`` (one label) for ``tokenizer``'s vocab."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tokenizer.pad_token_id if pad_token_id is None else pad_token_id,
    )
    config.num_labels = 1
    return AutoModelForSequenceClassification.from_config(config).eval()
