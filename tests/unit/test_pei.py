"""The PEI controller (docs/methods.md §4), against hand computations and the report's table."""

import math

import pytest

from align.pei.alignment import on_policy_alignment, overall, reward_hacking
from align.pei.controller import (
    ControllerConfig,
    Decision,
    RoundMeasurements,
    decide,
    next_beta,
    tertile_tiers,
    tiers_for,
    update_weights,
)

CFG = ControllerConfig()

# The attribution table as printed in docs/methods.md §4 (rows: PPO outcome; columns: RM
# good/medium/bad).
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


# ------------------------------------------------------------ on-policy alignment, reward hacking


def test_on_policy_alignment_by_hand():
    # a: good/agree, good/disagree, bad/agree, bad/tie (a tie is no agreement), same (ignored),
    #    unjudged (ignored) → 2 of 4 decisive pairs ordered as the judge orders.
    # b: only "same" and unjudged verdicts: no decisive pair.
    verdicts = ["good", "good", "bad", "bad", "same", None, "same", None]
    r_policy = [1.0, 0.0, 0.0, 0.5, 9.0, 9.0, 1.0, 2.0]
    r_sft = [0.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0]
    categories = ["a"] * 6 + ["b"] * 2
    assert on_policy_alignment(verdicts, r_policy, r_sft, categories) == {
        "a": {"n": 4, "accuracy": 0.5},
        "b": {"n": 0, "accuracy": 0.0},
    }


def test_reward_hacking_by_hand():
    # Hacked: the judge says bad and the reward prefers the policy (a tie is not a preference).
    verdicts = ["bad", "bad", "bad", "good", "same", None, "same"]
    r_policy = [2.0, 0.0, 1.0, 2.0, 2.0, 2.0, 3.0]
    r_sft = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    categories = ["a"] * 6 + ["b"]
    hacking = reward_hacking(verdicts, r_policy, r_sft, categories)
    assert hacking == {
        "a": {"n": 5, "count": 1, "rate": 0.2},  # the unjudged pair is not counted
        "b": {"n": 1, "count": 0, "rate": 0.0},
    }
    assert overall(hacking, "rate") == {"n": 6, "rate": pytest.approx(1 / 6)}
    with pytest.raises(ValueError, match="same length, got 7, 7, 7, 6"):
        reward_hacking(verdicts, r_policy, r_sft, categories[:-1])


def demo_round_zero(on_policy: dict[str, tuple[float, int]]) -> RoundMeasurements:
    """Round 0 of `make demo` before on-policy alignment (50 eval prompts per sub-domain): the
    policy is worse than SFT in 28 of 50 保险 and 34 of 50 金融百科 answers, and the reward model
    orders every labelled pair right."""
    good_bad = {"保险": (4, 28), "金融百科": (2, 34), "金融计算": (12, 3)}
    good_bad |= {"合规与风险管理": (20, 6), "理财规划": (9, 8), "客服对话": (10, 4)}
    gain = {c: (g - b) / 50 for c, (g, b) in good_bad.items()}
    return RoundMeasurements(
        gain=gain,
        gain_counts={c: 50 for c in gain},
        alignment={c: 1.0 for c in gain},
        alignment_counts={c: 50 for c in gain},
        overall_gain=sum(gain.values()) / len(gain),
        on_policy_alignment={c: v for c, (v, _) in on_policy.items()},
        on_policy_counts={c: n for c, (_, n) in on_policy.items()},
    )


# On-policy alignment as a hacked reward model gives it: in 保险 and 金融百科 it prefers the
# policy's answer in most pairs the judge gives SFT (here 4 of 32 and 3 of 36 decisive pairs
# ordered right); elsewhere it agrees with the judge.
DEMO_ON_POLICY = {
    "保险": (4 / 32, 32),
    "金融百科": (3 / 36, 36),
    "金融计算": (0.8, 15),  # too few decisive pairs (< 20): unknown
    "合规与风险管理": (0.85, 26),
    "理财规划": (0.65, 17),  # too few
    "客服对话": (0.9, 14),  # too few
}


def decide_demo(mode: str) -> Decision:
    cfg = ControllerConfig(rm_alignment=mode)
    m = demo_round_zero(DEMO_ON_POLICY)
    weights = {c: 1 / 6 for c in m.gain}
    return decide(0, m, weights, weights, 0.1, None, 2, cfg)


def test_labelled_alignment_feeds_the_exploited_sub_domains():
    d = decide_demo("labelled")
    assert d.ppo_tiers["保险"] == d.ppo_tiers["金融百科"] == "bad"  # G = −48 %, −64 %
    assert d.rm_tiers["保险"] == d.rm_tiers["金融百科"] == "good"  # labelled: 100 %
    assert d.steps["保险"] == d.steps["金融百科"] == +2
    assert d.weights["保险"] > 1 / 6 and d.alignment_source == "labelled"


@pytest.mark.parametrize("mode", ["on_policy", "min"])
def test_on_policy_alignment_moves_the_exploited_sub_domains_down(mode):
    d = decide_demo(mode)
    assert d.rm_tiers["保险"] == d.rm_tiers["金融百科"] == "bad"
    assert d.steps["保险"] == d.steps["金融百科"] == -2  # PPO bad, RM bad: ↓↓
    assert d.weights["保险"] < 1 / 6 and d.weights["金融百科"] < 1 / 6
    # both alignments are logged whichever decided
    assert d.alignment_labelled["保险"] == 1.0
    assert d.alignment_on_policy["保险"] == pytest.approx(4 / 32)
    assert d.alignment["保险"] == pytest.approx(4 / 32)


def test_too_few_decisive_pairs_is_unknown_on_policy_and_labelled_under_min():
    on_policy, lower = decide_demo("on_policy"), decide_demo("min")
    # 金融计算: 15 decisive pairs < 20: medium on-policy; min falls back to labelled (100 %)
    assert on_policy.rm_tiers["金融计算"] == "medium" and lower.rm_tiers["金融计算"] == "good"
    # 合规与风险管理: 26 pairs at 85 % on-policy, 100 % labelled: min takes 85 %
    assert lower.alignment["合规与风险管理"] == pytest.approx(0.85)
    # a sub-domain with no decisive pair at all, and no labelled pair either: medium, value 0
    m = RoundMeasurements({"x": 0.0}, {"x": 50}, {}, {}, 0.0, {"x": 0.0}, {"x": 0})
    for mode in ("on_policy", "min", "labelled"):
        d = decide(0, m, {"x": 1.0}, {"x": 1.0}, 0.1, None, 2, ControllerConfig(rm_alignment=mode))
        assert d.rm_tiers == {"x": "medium"}


def test_decisions_written_before_on_policy_alignment_still_load():
    old = decide_demo("labelled").to_dict()
    for key in ("alignment_labelled", "alignment_on_policy", "alignment_source"):
        del old[key]
    d = Decision(**old)
    assert d.alignment_source == "labelled" and d.alignment_on_policy == {}
    with pytest.raises(ValueError, match="rm_alignment: expected one of on_policy, labelled"):
        ControllerConfig(rm_alignment="judge")
