"""GSB rates and bootstrap intervals (pure): hand-computed values, coverage, invariants."""

from __future__ import annotations

import numpy as np
import pytest

from eval.gsb import normalize_verdict, summarize

# category X: good ×3 (as "good", "win", 1), same ×1 ("tie"), bad ×1 (-1)
# category Y: good ×1, bad ×3, and one comparison the judge could not decide (None)
JUDGEMENTS = ["good", "win", 1, "tie", -1, "GOOD", "bad", "loss", "worse", None]
CATEGORIES = ["X"] * 5 + ["Y"] * 5


def test_rates_reproduce_hand_computed_values():
    report = summarize(JUDGEMENTS, CATEGORIES, n_boot=200, seed=0)
    x, y, overall = report.row("X"), report.row("Y"), report.overall
    # X: n = 5; win 3/5; win+tie (3+1)/5; net (3-1)/5
    assert (x.good, x.same, x.bad, x.unjudged, x.n) == (3, 1, 1, 0, 5)
    assert x.rates == pytest.approx({"win": 0.6, "win_tie": 0.8, "loss": 0.2, "net_win": 0.4})
    # Y: n = 4 (None is unjudged, left out); win 1/4; win+tie 1/4; net (1-3)/4
    assert (y.good, y.same, y.bad, y.unjudged, y.n) == (1, 0, 3, 1, 4)
    assert y.rates == pytest.approx({"win": 0.25, "win_tie": 0.25, "loss": 0.75, "net_win": -0.5})
    # overall: good 4, same 1, bad 4 of n = 9
    assert (overall.good, overall.same, overall.bad, overall.unjudged) == (4, 1, 4, 1)
    assert overall.win_rate == pytest.approx(4 / 9)
    assert overall.win_tie_rate == pytest.approx(5 / 9)
    assert overall.net_win_rate == pytest.approx(0.0)
    assert [r.category for r in report.rows] == ["X", "Y"]  # order of first appearance


def test_report_serialises_and_renders_the_same_numbers():
    report = summarize(JUDGEMENTS, CATEGORIES, n_boot=200, seed=0)
    d = report.to_dict()
    assert d["per_category"]["X"]["n"] == 5 and d["overall"]["good"] == 4
    assert d["per_category"]["Y"]["rates"]["net_win"] == pytest.approx(-0.5)
    md = report.to_markdown()
    assert "| X | 5 | 3 | 1 | 1 | 60.0 [" in md
    assert "| Y | 4 | 1 | 0 | 3 | 25.0 [" in md and "| -50.0 [" in md
    assert "| **overall** | 9 | 4 | 1 | 4 |" in md


def test_intervals_are_deterministic_ordered_and_hold_the_estimate():
    a = summarize(JUDGEMENTS, CATEGORIES, n_boot=500, seed=7)
    b = summarize(JUDGEMENTS, CATEGORIES, n_boot=500, seed=7)
    assert a.to_dict() == b.to_dict()
    for row in [*a.rows, a.overall]:
        for name, (low, high) in row.intervals.items():
            assert low <= row.rates[name] <= high
    # all judgements alike: the bootstrap cannot vary, the interval has zero width
    same = summarize(["same"] * 6, ["Z"] * 6, n_boot=100)
    assert same.overall.intervals["win_tie"] == (1.0, 1.0)
    assert same.overall.intervals["net_win"] == (0.0, 0.0)


def test_bootstrap_intervals_cover_the_truth_at_about_their_nominal_rate():
    """400 simulated evaluations of n = 120 from known shares (good .5, same .3, bad .2).

    Nominal 95 %; with 400 runs the binomial standard error of a coverage is ~1.1 pp, so the
    accepted band [0.90, 0.98] is about ±4 standard errors wide around 0.95.
    """
    rng = np.random.default_rng(123)
    truth = {"win": 0.5, "win_tie": 0.8, "net_win": 0.3}
    hits = dict.fromkeys(truth, 0)
    sims, n = 400, 120
    for s in range(sims):
        verdicts = rng.choice(["good", "same", "bad"], size=n, p=[0.5, 0.3, 0.2]).tolist()
        overall = summarize(verdicts, ["c"] * n, n_boot=1000, seed=s).overall
        for name, value in truth.items():
            low, high = overall.intervals[name]
            hits[name] += low <= value <= high
    coverage = {k: v / sims for k, v in hits.items()}
    assert all(0.90 <= c <= 0.98 for c in coverage.values()), coverage


def test_wider_confidence_gives_wider_intervals():
    verdicts = ["good"] * 30 + ["same"] * 20 + ["bad"] * 10
    narrow = summarize(verdicts, ["c"] * 60, confidence=0.5, seed=1).overall.intervals["win"]
    wide = summarize(verdicts, ["c"] * 60, confidence=0.99, seed=1).overall.intervals["win"]
    assert wide[0] < narrow[0] and wide[1] > narrow[1]


@pytest.mark.parametrize(
    "value, expected",
    [("good", "good"), ("Win", "good"), (1, "good"), ("+1", "good"), ("same", "same"),
     ("TIE", "same"), (0, "same"), ("bad", "bad"), (-1, "bad"), ("loss", "bad"), (None, None)],
)  # fmt: skip
def test_verdict_aliases(value, expected):
    assert normalize_verdict(value) == expected


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="judgement 2: expected good/same/bad"):
        summarize(["good", "same", "maybe"], ["a", "a", "a"])
    with pytest.raises(ValueError, match="judgement 0"):
        summarize([True], ["a"])
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        summarize(["good", "bad"], ["a"])
    with pytest.raises(ValueError, match="confidence"):
        summarize(["good"], ["a"], confidence=1.0)
