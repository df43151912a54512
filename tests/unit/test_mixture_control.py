"""The dynamic mixture controller (docs/methods.md §6 [P]) on synthetic per-category loss curves."""

from __future__ import annotations

import math

import pytest

from align.core.mixture_control import (
    MixtureControlConfig,
    MixtureController,
    clamp_normalise,
    relative_loss_signal,
    update_weights,
)


def test_one_update_by_hand():
    # x = log(L/L0): a = log(1/2), b = 0; mean = -0.3466, std = 0.3466 -> z = (-1, +1)
    z = relative_loss_signal({"a": 2.0, "b": 2.0}, {"a": 1.0, "b": 2.0})
    assert z == pytest.approx({"a": -1.0, "b": 1.0}, abs=1e-12)
    # w = 0.5·e^{∓0.3}, renormalised: a = 1 / (1 + e^{0.6}) = 0.354344
    w = update_weights({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}, z, MixtureControlConfig())
    assert w["a"] == pytest.approx(1 / (1 + math.exp(0.6)), abs=1e-12)
    assert w["b"] == pytest.approx(1 - w["a"], abs=1e-12)


def test_categories_that_moved_alike_keep_their_weights():
    z = relative_loss_signal({"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 0.5})  # both halved
    assert z == {"a": 0.0, "b": 0.0}


def curves(epochs: int) -> dict[str, list[float]]:
    """Held-out loss per epoch (epoch 0 = before training)."""
    return {
        "converged": [2.0 * 0.5**e for e in range(epochs + 1)],  # halves every epoch
        "slow": [2.0 * 0.9**e for e in range(epochs + 1)],
        "flat": [2.0] * (epochs + 1),  # still high: nothing learnt yet
    }


def test_converged_categories_lose_share_and_high_loss_ones_gain():
    loss = curves(4)
    ctl = MixtureController({"converged": 1, "slow": 1, "flat": 1})
    ctl.observe_start({c: v[0] for c, v in loss.items()})
    history = [dict(ctl.weights)]
    for e in range(1, 5):
        history.append(ctl.update({c: v[e] for c, v in loss.items()}))
    assert history[1]["converged"] < history[0]["converged"]
    assert history[1]["flat"] > history[0]["flat"]
    for before, after in zip(history, history[1:]):  # until the clamps stop them
        assert after["converged"] <= before["converged"]
        assert after["flat"] >= before["flat"]
    assert history[-1]["converged"] == pytest.approx(0.5 / 3, abs=1e-12)  # at its floor
    assert history[-1]["converged"] < history[-1]["slow"] < history[-1]["flat"]


def test_an_overfitting_category_loses_share():
    # "over" improves with the others, then its held-out loss rises above its best
    loss = {"over": [2.0, 1.0, 1.3], "a": [2.0, 1.0, 0.9], "b": [2.0, 1.2, 1.1]}
    ctl = MixtureController({"over": 1, "a": 1, "b": 1})
    ctl.observe_start({c: v[0] for c, v in loss.items()})
    w1 = ctl.update({c: v[1] for c, v in loss.items()})
    w2 = ctl.update({c: v[2] for c, v in loss.items()})
    # without the overfitting rule its high relative loss would have raised its weight
    z_plain = relative_loss_signal(ctl.start, {c: v[2] for c, v in loss.items()})
    assert z_plain["over"] > 0
    assert ctl.history[-1]["z"]["over"] == -max(1.0, abs(z_plain["over"]))
    assert w2["over"] < w1["over"]


@pytest.mark.parametrize("steps", [1, 5, 40])
def test_clamps_and_normalisation_hold_after_every_update(steps):
    initial = {"a": 0.6, "b": 0.3, "c": 0.1}
    ctl = MixtureController(initial)
    ctl.observe_start({"a": 1.0, "b": 1.0, "c": 1.0})
    for k in range(1, steps + 1):
        w = ctl.update({"a": 0.5**k, "b": 1.0, "c": 1.0 + 0.001 * k})
        assert sum(w.values()) == pytest.approx(1.0, abs=1e-12)
        for c, w0 in initial.items():
            assert 0.5 * w0 - 1e-12 <= w[c] <= 2.0 * w0 + 1e-12
    if steps == 40:  # a keeps converging: pinned at its floor; b and c share the rest
        assert w["a"] == pytest.approx(0.3, abs=1e-12)
        assert w["b"] + w["c"] == pytest.approx(0.7, abs=1e-12)


def test_clamp_normalise_by_hand():
    # scale s: clip(s·[8, 1, 1], [0, .2, .2], [.5, 1, 1]) sums to 1 -> a at .5, b = c = .25
    out = clamp_normalise(
        {"a": 8, "b": 1, "c": 1},
        dict.fromkeys("abc", 0.2) | {"a": 0},
        {"a": 0.5, "b": 1.0, "c": 1.0},
    )
    assert out == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.25}, abs=1e-12)
    with pytest.raises(ValueError, match="sum to 1"):
        clamp_normalise({"a": 1, "b": 1}, {"a": 0.6, "b": 0.6}, {"a": 1, "b": 1})


def test_state_round_trip_and_bad_input():
    ctl = MixtureController({"a": 3, "b": 1})
    ctl.observe_start({"a": 1.0, "b": 1.0})
    ctl.update({"a": 0.5, "b": 0.9})
    twin = MixtureController({"a": 1, "b": 1})
    twin.load_state_dict(ctl.state_dict())
    assert twin.update({"a": 0.4, "b": 0.9}) == ctl.update({"a": 0.4, "b": 0.9})
    with pytest.raises(ValueError, match="before observe_start"):
        MixtureController({"a": 1}).update({"a": 1.0})
    with pytest.raises(ValueError, match="no current loss"):
        relative_loss_signal({"a": 1.0, "b": 1.0}, {"a": 1.0})
    with pytest.raises(ValueError, match="min_factor"):
        MixtureControlConfig(min_factor=1.5)
