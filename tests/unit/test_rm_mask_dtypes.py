"""Reward-model code reads attention masks of any dtype (bool, integer, float) the same way."""

from __future__ import annotations

import math

import pytest
import torch

from rm.losses import mask_lengths, token_bt_loss

MASK_DTYPES = [torch.bool, torch.int64, torch.int32, torch.float32, torch.bfloat16]


def _nll(x: float) -> float:
    """``-log σ(x)`` computed by hand."""
    return math.log1p(math.exp(-x))


def _pairs(dtype: torch.dtype):
    """Two pairs, right-padded to width 3.

    Pair 0: chosen [5, 6, 7], rejected [5, 8] → first difference at 1, window [1, 3); the
    rejected sequence holds its last value 0.5 at position 2 (its pad value 99 is never read).
    Pair 1: identical [3, 4] → window {1}, contributes log 2.
    """
    chosen_ids = torch.tensor([[5, 6, 7], [3, 4, 0]])
    rejected_ids = torch.tensor([[5, 8, 0], [3, 4, 0]])
    chosen_mask = torch.tensor([[1, 1, 1], [1, 1, 0]]).to(dtype)
    rejected_mask = torch.tensor([[1, 1, 0], [1, 1, 0]]).to(dtype)
    chosen_values = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.3, -7.0]])
    rejected_values = torch.tensor([[0.0, 0.5, 99.0], [0.0, 0.3, 42.0]])
    return chosen_values, rejected_values, chosen_ids, rejected_ids, chosen_mask, rejected_mask


@pytest.mark.parametrize("dtype", MASK_DTYPES, ids=str)
def test_token_bt_loss_is_the_hand_computed_value_for_every_mask_dtype(dtype):
    expected = ((_nll(1.0 - 0.5) + _nll(2.0 - 0.5)) / 2 + math.log(2)) / 2
    loss = token_bt_loss(*_pairs(dtype))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_token_bt_loss_is_identical_for_float_bool_and_int_masks():
    losses = [token_bt_loss(*_pairs(dtype)) for dtype in MASK_DTYPES]
    for loss in losses[1:]:
        assert torch.equal(loss, losses[0])


def test_mask_lengths_counts_non_zero_positions_as_int64():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 1.0, 1.0]])
    lengths = mask_lengths(mask)
    assert lengths.dtype == torch.int64
    assert lengths.tolist() == [2, 1, 3]


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32], ids=str)
def test_last_token_scores_accepts_any_mask_dtype(dtype):
    """The score read at the last attended token equals the unpadded single-sequence score."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from rm.model import last_token_scores

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, pad_token_id=0,
    )  # fmt: skip
    config.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(config).eval()
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    with torch.no_grad():
        got = last_token_scores(model, ids, mask.to(dtype))
        alone = [last_token_scores(model, ids[k : k + 1, :n], mask[k : k + 1, :n]) for k, n in
                 ((0, 3), (1, 2))]  # fmt: skip
    assert got.tolist() == pytest.approx([a.item() for a in alone], abs=1e-5)
