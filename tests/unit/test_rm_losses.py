"""rm.losses against hand computations on a 2-pair batch (arithmetic in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from rm.losses import bt_loss, info_nce_loss, irl_loss, token_bt_loss, ufrm_loss


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


CHOSEN = torch.tensor([1.0, 0.0])
REJECTED = torch.tensor([0.0, 0.5])


def test_bt_hand():
    # diffs 1.0 and -0.5: -(logσ(1) + logσ(-0.5))/2 = (0.313262 + 0.974077)/2 = 0.643669
    assert bt_loss(CHOSEN, REJECTED).item() == pytest.approx(0.6436693, abs=1e-6)
    assert bt_loss(CHOSEN, REJECTED).item() == pytest.approx(-(logsig(1) + logsig(-0.5)) / 2)


def test_bt_margin_hand():
    # margins [0.5, 0]: diffs 0.5 and -0.5 → (0.474077 + 0.974077)/2 = 0.724077
    loss = bt_loss(CHOSEN, REJECTED, torch.tensor([0.5, 0.0]))
    assert loss.item() == pytest.approx(0.7240770, abs=1e-6)


def test_bt_is_fp32_for_bf16_inputs():
    loss = bt_loss(CHOSEN.bfloat16(), REJECTED.bfloat16())
    assert loss.dtype == torch.float32


def test_irl_hand():
    # pair 1: logσ(1) + logσ(-0) = -0.313262 - 0.693147; pair 2: logσ(0) + logσ(-0.5)
    # = -0.693147 - 0.974077; mean of the negated sums = (1.006409 + 1.667224)/2 = 1.336817
    assert irl_loss(CHOSEN, REJECTED).item() == pytest.approx(1.3368165, abs=1e-6)


def test_irl_prefers_chosen_positive_rejected_negative():
    good = irl_loss(torch.tensor([2.0, 2.0]), torch.tensor([-2.0, -2.0]))
    shifted = irl_loss(torch.tensor([6.0, 6.0]), torch.tensor([2.0, 2.0]))  # same BT margin
    assert good < shifted


def test_info_nce_hand():
    # a = [[1,0],[0,1]], b = [[1,0],[1,1]] → cos(a,b) = [[1, .7071],[0, .7071]]; τ = 0.5
    # row 0 (target 0): logits [2, 1.41421] → log(1 + e^(1.41421-2)) = log(1.556680) = 0.442543
    # row 1 (target 1): logits [0, 1.41421] → log(1 + e^(0-1.41421)) = log(1.243117) = 0.217624
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    expected = (math.log1p(math.exp(math.sqrt(2) - 2)) + math.log1p(math.exp(-math.sqrt(2)))) / 2
    assert expected == pytest.approx(0.330085, abs=1e-6)
    assert info_nce_loss(a, b, 0.5).item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_scale_invariant():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    assert info_nce_loss(a, b, 0.05).item() == pytest.approx(
        info_nce_loss(3 * a, 0.5 * b, 0.05).item(), rel=1e-5
    )


def test_token_bt_hand():
    # pair 1: chosen [5,6,7], rejected [5,8,pad]; first difference at t=1, end 3 → t ∈ {1,2};
    #   rejected holds its last value 0.2 at t=2 (its pad value 0.7 must not count):
    #   -logσ(0.4-0.2) = 0.598139, -logσ(0.9-0.2) = 0.403186 → 0.500662
    # pair 2: chosen [5,6,pad], rejected [5,6,9]; differ first at t=2 (chosen ended), end 3 →
    #   chosen holds 1.0: -logσ(1.0-2.0) = 1.313262
    # mean = (0.500662 + 1.313262)/2 = 0.906962
    c_ids = torch.tensor([[5, 6, 7], [5, 6, 0]])
    r_ids = torch.tensor([[5, 8, 0], [5, 6, 9]])
    c_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    r_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    vc = torch.tensor([[0.1, 0.4, 0.9], [0.0, 1.0, 5.0]])
    vr = torch.tensor([[0.3, 0.2, 0.7], [0.0, 1.0, 2.0]])
    expected = (-(logsig(0.2) + logsig(0.7)) / 2 - logsig(-1.0)) / 2
    assert expected == pytest.approx(0.906962, abs=1e-6)
    loss = token_bt_loss(vc, vr, c_ids, r_ids, c_mask, r_mask)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_token_bt_masked_positions_cannot_change_it():
    c_ids = torch.tensor([[5, 6, 7], [5, 6, 0]])
    r_ids = torch.tensor([[5, 8, 0], [5, 6, 9]])
    c_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    r_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    vc, vr = torch.randn(2, 3), torch.randn(2, 3)
    base = token_bt_loss(vc, vr, c_ids, r_ids, c_mask, r_mask)
    vc2, vr2 = vc.clone(), vr.clone()
    vc2[1, 2], vr2[0, 2] = 100.0, -100.0  # pad positions
    vc2[:, 0], vr2[:, 0] = 7.0, -3.0  # shared first token: before the first difference
    assert token_bt_loss(vc2, vr2, c_ids, r_ids, c_mask, r_mask).item() == pytest.approx(
        base.item()
    )


def test_token_bt_equals_last_token_bt_when_only_last_token_differs():
    ids_c, ids_r = torch.tensor([[4, 5, 6]]), torch.tensor([[4, 5, 7]])
    mask = torch.ones(1, 3, dtype=torch.long)
    vc, vr = torch.randn(1, 3), torch.randn(1, 3)
    assert token_bt_loss(vc, vr, ids_c, ids_r, mask, mask).item() == pytest.approx(
        bt_loss(vc[:, -1], vr[:, -1]).item(), abs=1e-6
    )


def test_ufrm_total_hand():
    bt, irl, cl = torch.tensor(0.6), torch.tensor(1.2), torch.tensor(2.0)
    # 0.6 + 0.5·1.2 + 0.1·2.0 = 1.4
    assert ufrm_loss(bt, irl, cl, 0.5, 0.1).item() == pytest.approx(1.4)
    assert ufrm_loss(bt, None, None).item() == pytest.approx(0.6)
    assert ufrm_loss(bt.bfloat16(), irl, cl).dtype == torch.float32
