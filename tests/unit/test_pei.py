"""The PEI controller (METHODS §4), against hand computations and the report's table."""

import math

import pytest

from align.pei.controller import (
    ControllerConfig,
    RoundMeasurements,
    decide,
    next_beta,
    tertile_tiers,
    tiers_for,
    update_weights,
)

CFG = ControllerConfig()

# The attribution table as printed in METHODS §4 (rows: PPO outcome; columns: RM good/medium/bad).
TABLE = {
    "good": {"good": 0, "medium": +1, "bad": 0},
    "medium": {"good": +1, "medium": 0, "bad": -1},
    "bad": {"good": +2, "medium": -1, "bad": -2},
}
GAIN_IN_TIER = {"good": 0.30, "medium": 0.10, "bad": 0.00}  # thresholds 25 pp / 5 pp
ALIGNMENT_IN_TIER = {"good": 0.80, "medium": 0.65, "bad": 0.50}  # thresholds 70% / 60%


def measured(gain, alignment, n=50, overall=0.0):
    return RoundMeasurements(
        gain=gain,
        gain_counts={d: n for d in gain},
        alignment=alignment,
        alignment_counts={d: n for d in alignment},
        overall_gain=overall,
    )


def one_round(gain, alignment, weights=None, n=50, overall=0.0, previous=None, rnd=0, cfg=CFG):
    weights = weights or {d: 1 / len(gain) for d in gain}
    return decide(
        rnd, measured(gain, alignment, n, overall), weights, weights, 0.1, previous, 3, cfg
    )


@pytest.mark.parametrize("ppo", ["good", "medium", "bad"])
@pytest.mark.parametrize("rm", ["good", "medium", "bad"])
def test_every_cell_of_the_attribution_table(ppo, rm):
    # A second sub-domain in the opposite corner keeps the weights free to move.
    d = one_round({"x": GAIN_IN_TIER[ppo], "y": 0.1}, {"x": ALIGNMENT_IN_TIER[rm], "y": 0.65})
    assert (d.ppo_tiers["x"], d.rm_tiers["x"]) == (ppo, rm)
    assert d.steps["x"] == TABLE[ppo][rm]
    assert d.steps["y"] == 0  # medium / medium
    # The weight moves the way the arrow points, by exp(η·s) before renormalisation.
    raw = 0.5 * math.exp(CFG.eta * TABLE[ppo][rm])
    assert d.weights["x"] == pytest.approx(raw / (raw + 0.5), abs=1e-12)


def test_threshold_boundaries_belong_to_the_upper_tier():
    counts = {d: 30 for d in "abcd"}
    gain = {"a": 0.25, "b": 0.2499, "c": 0.05, "d": 0.0499}
    assert tiers_for(gain, counts, 0.25, 0.05, CFG) == {
        "a": "good",
        "b": "medium",
        "c": "medium",
        "d": "bad",
    }
    alignment = {"a": 0.70, "b": 0.6999, "c": 0.60, "d": 0.5999}
    assert tiers_for(alignment, counts, 0.70, 0.60, CFG) == {
        "a": "good",
        "b": "medium",
        "c": "medium",
        "d": "bad",
    }


def test_too_few_samples_is_medium():
    tiers = tiers_for({"a": 0.9, "b": -0.9}, {"a": 29, "b": 30}, 0.25, 0.05, CFG)
    assert tiers == {"a": "medium", "b": "bad"}


def test_tertiles_split_six_sub_domains_in_thirds():
    values = {"a": 0.6, "b": 0.5, "c": 0.4, "d": 0.3, "e": 0.2, "f": 0.1}
    assert tertile_tiers(values) == {
        "a": "good",
        "b": "good",
        "c": "medium",
        "d": "medium",
        "e": "bad",
        "f": "bad",
    }
    assert tertile_tiers({"only": 0.3}) == {"only": "medium"}
    cfg = ControllerConfig(tiering="tertiles")
    # Tertiles ignore the absolute thresholds: three negative gains still get a good tier.
    tiers = tiers_for({"a": -0.1, "b": -0.2, "c": -0.3}, {d: 50 for d in "abc"}, 0.25, 0.05, cfg)
    assert tiers == {"a": "good", "b": "medium", "c": "bad"}


def test_multiplicative_step_and_renormalisation_by_hand():
    # w = (.5, .5), s = (+1, −1), η = ln 1.5: raw (.75, 1/3) → (.75, .3333)/1.08333 = (.6923, .3077)
    w = update_weights({"a": 0.5, "b": 0.5}, {"a": 1, "b": -1}, {"a": 0.5, "b": 0.5}, CFG)
    assert w["a"] == pytest.approx(0.75 / (0.75 + 1 / 3), abs=1e-12)
    assert w["b"] == pytest.approx((1 / 3) / (0.75 + 1 / 3), abs=1e-12)
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-12)


def test_floor_at_a_quarter_of_the_initial_weight():
    init = {"a": 0.5, "b": 0.5}
    # Twice ↑↑ / ↓↓: raw after the 2nd step puts b at .0375 < .125 = .25 × .5, so b is pinned.
    w = update_weights(init, {"a": 2, "b": -2}, init, CFG)
    assert w["b"] == pytest.approx(0.2222 / 1.3472, abs=1e-3)
    w = update_weights(w, {"a": 2, "b": -2}, init, CFG)
    assert w == pytest.approx({"a": 0.875, "b": 0.125}, abs=1e-12)


def test_floor_survives_renormalisation_with_three_sub_domains():
    init = {"a": 0.2, "b": 0.3, "c": 0.5}
    w = {"a": 0.06, "b": 0.30, "c": 0.64}
    out = update_weights(w, {"a": -2, "b": -2, "c": 2}, init, CFG)
    floors = {d: 0.25 * v for d, v in init.items()}
    assert sum(out.values()) == pytest.approx(1.0, abs=1e-12)
    assert all(out[d] >= floors[d] - 1e-12 for d in out)
    assert out["a"] == pytest.approx(floors["a"], abs=1e-12)  # pinned
    # The unpinned weights keep the ratio of their raw values.
    raw_b, raw_c = 0.30 / 2.25, 0.64 * 2.25
    assert out["b"] / out["c"] == pytest.approx(raw_b / raw_c, rel=1e-9)


def test_beta_schedule_halves_down_to_the_floor():
    betas = [0.1]
    for _ in range(5):
        betas.append(next_beta(betas[-1], CFG))
    assert betas == pytest.approx([0.1, 0.05, 0.025, 0.0125, 0.01, 0.01])


def test_stop_when_every_step_is_zero():
    d = one_round({"x": 0.3, "y": 0.1}, {"x": 0.8, "y": 0.65})  # good/good and medium/medium
    assert d.steps == {"x": 0, "y": 0}
    assert d.stop and d.stop_reason == "mixture unchanged"


def test_stop_when_the_floor_absorbs_every_step():
    # y sits on its floor and is pushed further down: s ≠ 0 but Δw = 0.
    init = {"x": 0.5, "y": 0.5}
    weights = {"x": 0.875, "y": 0.125}
    m = measured({"x": 0.1, "y": 0.0}, {"x": 0.65, "y": 0.5})
    d = decide(1, m, weights, init, 0.05, None, 3, CFG)
    assert d.steps == {"x": 0, "y": -2}
    assert d.weight_change == pytest.approx(0.0, abs=1e-12)
    assert d.stop_reason == "mixture unchanged"


def test_stop_when_overall_gain_stalls():
    g, a = {"x": 0.0, "y": 0.3}, {"x": 0.8, "y": 0.8}  # x: ↑↑, so the mixture moves
    assert not one_round(g, a, overall=0.12, previous=0.10, rnd=1).stop  # +2 pp
    stalled = one_round(g, a, overall=0.105, previous=0.10, rnd=1)  # +0.5 pp < 1 pp
    assert stalled.stop and stalled.stop_reason.startswith("no gain")
    assert not one_round(g, a, overall=-0.5, previous=None, rnd=0).stop  # round 0: no previous


def test_stop_at_the_round_limit_and_without_early_stopping():
    g, a = {"x": 0.0, "y": 0.3}, {"x": 0.8, "y": 0.8}
    assert one_round(g, a, rnd=3).stop_reason == "round limit (3)"
    patient = ControllerConfig(early_stop=False)
    unchanged = {"x": 0.3, "y": 0.1}, {"x": 0.8, "y": 0.65}
    assert not one_round(*unchanged, rnd=1, cfg=patient).stop
    assert one_round(*unchanged, rnd=3, cfg=patient).stop


def test_decision_records_beta_and_treats_unmeasured_sub_domains_as_medium():
    d = one_round({"x": 0.0, "y": 0.3}, {"x": 0.8, "y": 0.8})
    assert (d.beta_used, d.next_beta) == (0.1, 0.05)
    assert set(d.to_dict()) >= {"gain", "alignment", "steps", "weights", "next_beta", "stop"}
    d = one_round({"x": 0.0}, {"x": 0.8}, weights={"x": 0.5, "y": 0.5})
    assert (d.ppo_tiers["y"], d.rm_tiers["y"], d.steps["y"]) == ("medium", "medium", 0)
    assert d.steps["x"] == 2


def test_invalid_controller_settings():
    with pytest.raises(ValueError, match="tiering"):
        ControllerConfig(tiering="quartiles")
    with pytest.raises(ValueError, match="weight_floor"):
        ControllerConfig(weight_floor=0)
