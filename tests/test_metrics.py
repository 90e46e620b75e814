import pytest

from pytest_rmb.metrics import Tally, is_correct, margin, summarize
from pytest_rmb.scenarios import Scenario


def scenario(sid, goal, task="T"):
    return Scenario(sid, goal, task, sid, "p.json", "b.json", "d")


SCENARIOS = {
    "t/a": scenario("t/a", "helpfulness"),
    "t/b": scenario("t/b", "helpfulness"),
    "harmlessness/x": scenario("harmlessness/x", "harmlessness", "Harmlessness"),
}


def records(scenario_id, kind, correct, total):
    return [{"scenario": scenario_id, "kind": kind, "correct": i < correct} for i in range(total)]


@pytest.mark.parametrize(
    ("scores", "correct"),
    [
        ([2.0, 1.0], True),
        ([1.0, 1.0], False),  # a tie is wrong
        ([1.0, 2.0], False),
        ([3.0, 1.0, 2.0, 2.9], True),
        ([3.0, 1.0, 3.0], False),  # BoN: tying any loser is wrong
        ([3.0, 4.0, 1.0], False),
    ],
)
def test_correct_is_strictly_greater_than_every_rival(scores, correct):
    assert is_correct(scores) is correct


def test_margin_is_against_the_strongest_rival():
    assert margin([3.0, 1.0, 2.5]) == 0.5
    assert margin([1.0, 4.0]) == -3.0


def test_sections_are_micro_averages_and_overall_their_unweighted_mean():
    recs = (
        records("t/a", "pairwise", 9, 10) + records("t/b", "pairwise", 1, 30)
        + records("t/a", "bon", 1, 4)
        + records("harmlessness/x", "pairwise", 3, 4) + records("harmlessness/x", "bon", 0, 2)
    )
    s = summarize(recs, SCENARIOS, resamples=200)
    sec = s["sections"]
    assert sec["helpfulness.pairwise"]["correct"] == 10 and sec["helpfulness.pairwise"]["total"] == 40
    assert sec["helpfulness.pairwise"]["accuracy"] == pytest.approx(0.25)
    # Macro: mean over scenarios (0.9 and 1/30), not over samples.
    assert sec["helpfulness.pairwise"]["macro"] == pytest.approx((0.9 + 1 / 30) / 2)
    assert sec["helpfulness.bon"]["accuracy"] == pytest.approx(0.25)
    assert sec["harmlessness.pairwise"]["accuracy"] == pytest.approx(0.75)
    assert sec["harmlessness.bon"]["accuracy"] == 0.0
    assert s["overall"] == pytest.approx((0.25 + 0.25 + 0.75 + 0.0) / 4)
    assert s["overall_sections"] == 4
    assert s["tasks"]["t"]["pairwise"] == {"correct": 10, "total": 40, "accuracy": 0.25}
    assert s["scenarios"]["t/b"]["bon"] == {"correct": 0, "total": 0, "accuracy": None}


def test_published_reference_row_is_reproduced():
    # RM-R1-Qwen2.5-Instruct-32B, from the RM-R1 project's result files (DESIGN.md section 1).
    recs = (
        records("t/a", "pairwise", 8071, 10067) + records("harmlessness/x", "pairwise", 5692, 7064)
        + records("t/a", "bon", 1372, 2109) + records("harmlessness/x", "bon", 1111, 1677)
    )
    assert summarize(recs, SCENARIOS, resamples=10)["overall"] == pytest.approx(0.730136, abs=5e-7)


def test_empty_sections_are_reported_and_overall_uses_the_present_ones():
    s = summarize(records("t/a", "pairwise", 1, 2), SCENARIOS, resamples=50)
    assert s["sections"]["helpfulness.bon"] == {
        "correct": 0, "total": 0, "accuracy": None, "ci95": None, "macro": None
    }
    assert s["overall"] == 0.5 and s["overall_sections"] == 1
    assert summarize([], SCENARIOS)["overall"] is None


def test_bootstrap_interval_is_seeded_and_brackets_the_accuracy():
    recs = records("t/a", "pairwise", 700, 1000)
    first = summarize(recs, SCENARIOS, seed=3)["sections"]["helpfulness.pairwise"]["ci95"]
    again = summarize(recs, SCENARIOS, seed=3)["sections"]["helpfulness.pairwise"]["ci95"]
    other = summarize(recs, SCENARIOS, seed=4)["sections"]["helpfulness.pairwise"]["ci95"]
    assert first == again and first != other
    low, high = first
    # Normal-approximation half width for p=0.7, n=1000 is 1.96*sqrt(.21/1000) = 0.0284.
    assert low < 0.7 < high
    assert (high - low) / 2 == pytest.approx(0.0284, abs=0.004)


def test_tally_accuracy():
    t = Tally()
    assert t.accuracy is None
    t.add(True), t.add(False), t.add(True)
    assert (t.correct, t.total, t.accuracy) == (2, 3, pytest.approx(2 / 3))
