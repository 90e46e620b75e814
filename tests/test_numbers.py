"""The numbers the report and the gates decide on, each checked against a computation written here.

Every interval and p-value is recomputed in this file with plain numpy from the documented method
(one binomial draw per resample for an accuracy, one multinomial draw over discordant pairs per
resample for a paired difference, sections in a fixed order from one seeded generator), and also
checked against a plain index-resampling bootstrap and exact binomial quantiles, which share no code
or random stream with the implementation. The gate boundaries are hit exactly.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from rich.console import Console

from pytest_rmb.data import Message, PairSample, Response
from pytest_rmb.engine import Engine, _is_out_of_memory
from pytest_rmb.gate import (
    FAIL,
    NOT_EVALUATED,
    PASS,
    GateError,
    compare_with_baseline,
    evaluate_thresholds,
    load_baseline,
    parse_gate,
    provenance_differences,
)
from pytest_rmb.metrics import outcome_records, paired_comparison, summarize
from pytest_rmb.report import (
    fit_width,
    grouped_table,
    headline_table,
    legend_lines,
    markdown_document,
    table_headers,
)
from pytest_rmb.scenarios import Scenario

SECTION_ORDER = ("helpfulness.pairwise", "helpfulness.bon", "harmlessness.pairwise", "harmlessness.bon")


def scenario(sid, goal, task):
    return Scenario(sid, goal, task, sid, "p.json", "b.json", "d")


SCENARIOS = {
    "code/a": scenario("code/a", "helpfulness", "Code"),
    "chat/b": scenario("chat/b", "helpfulness", "Chat"),
    "harmlessness/s1": scenario("harmlessness/s1", "harmlessness", "Harmlessness"),
}
GOAL_OF = {sid: s.goal for sid, s in SCENARIOS.items()}
SECTION_SCENARIO = {"helpfulness": "code/a", "harmlessness": "harmlessness/s1"}


def make_records(plan, null=None):
    """plan: {(scenario, kind): list of bools}; null: the same shape for ``null_correct``."""
    out = []
    for (sid, kind), outcomes in plan.items():
        for i, correct in enumerate(outcomes):
            record = {"scenario": sid, "kind": kind, "uid": str(i), "correct": correct}
            if null is not None:
                record["null_correct"] = null[sid, kind][i]
            out.append(record)
    return out


def ones(correct, total):
    return [True] * correct + [False] * (total - correct)


# Four sections of different sizes and accuracies: averaging over the wrong axis cannot hide.
COUNTS = {"helpfulness.pairwise": (270, 300), "helpfulness.bon": (60, 120),
          "harmlessness.pairwise": (140, 200), "harmlessness.bon": (24, 80)}


def four_section_records():
    plan = {}
    for section, (correct, total) in COUNTS.items():
        goal, kind = section.split(".")
        plan[SECTION_SCENARIO[goal], kind] = ones(correct, total)
    return make_records(plan)


def expected_accuracy_draws(counts, seed, resamples):
    """The documented bootstrap: per section in table order, Binomial(n, c/n)/n from one generator."""
    rng = np.random.default_rng(seed)
    return [rng.binomial(n, c / n, size=resamples) / n for c, n in counts]


def binomial_quantile(n, p, q):
    """Smallest k with P(X <= k) >= q for X ~ Binomial(n, p), exactly."""
    total = 0.0
    for k in range(n + 1):
        total += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if total >= q:
            return k
    return n


@pytest.mark.parametrize("seed", [0, 7])
def test_section_and_overall_intervals_are_the_documented_bootstrap(seed):
    resamples = 2000
    summary = summarize(four_section_records(), SCENARIOS, seed=seed, resamples=resamples)
    counts = [COUNTS[s] for s in SECTION_ORDER]
    draws = expected_accuracy_draws(counts, seed, resamples)
    for section, (c, n), section_draws in zip(SECTION_ORDER, counts, draws):
        entry = summary["sections"][section]
        assert (entry["correct"], entry["total"], entry["accuracy"]) == (c, n, c / n)
        assert entry["ci95"] == list(np.percentile(section_draws, [2.5, 97.5]))
        # And the bootstrap is what it claims: close to the exact binomial quantiles.
        low, high = binomial_quantile(n, c / n, 0.025) / n, binomial_quantile(n, c / n, 0.975) / n
        assert entry["ci95"][0] == pytest.approx(low, abs=1.5 / n + 0.004)
        assert entry["ci95"][1] == pytest.approx(high, abs=1.5 / n + 0.004)
    assert summary["overall"] == sum(c / n for c, n in counts) / 4
    # Overall: the mean of the four sections within each resample, then the percentiles of the
    # ``resamples`` means (not of four per-section averages).
    per_resample = (draws[0] + draws[1] + draws[2] + draws[3]) / 4
    assert len(per_resample) == resamples
    assert summary["overall_ci95"] == list(np.percentile(per_resample, [2.5, 97.5]))


def test_overall_interval_matches_a_plain_index_bootstrap():
    summary = summarize(four_section_records(), SCENARIOS, seed=0, resamples=2000)
    rng = np.random.default_rng(12345)
    means = np.zeros(4000)
    for section in SECTION_ORDER:
        c, n = COUNTS[section]
        outcomes = np.array(ones(c, n), dtype=float)
        means += outcomes[rng.integers(0, n, size=(4000, n))].mean(axis=1) / 4
    low, high = np.percentile(means, [2.5, 97.5])
    assert summary["overall_ci95"][0] == pytest.approx(low, abs=0.006)
    assert summary["overall_ci95"][1] == pytest.approx(high, abs=0.006)
    assert high - low < 0.08  # far narrower than the spread of the section accuracies (0.3 to 0.9)


def expected_paired(old, new, seed, resamples):
    """Paired bootstrap written out: per section (sorted), one multinomial draw per resample over
    (lost, gained, same); overall is the mean of the sections' draws within each resample."""
    rng = np.random.default_rng(seed)
    out, all_draws = {}, []
    for section in sorted(old):
        a, b = old[section], new[section]
        n = len(a)
        lost = sum(1 for x, y in zip(a, b) if x and not y)
        gained = sum(1 for x, y in zip(a, b) if y and not x)
        counts = rng.multinomial(n, [lost / n, gained / n, (n - lost - gained) / n], size=resamples)
        draws = (counts[:, 1] - counts[:, 0]) / n
        all_draws.append(draws)
        out[section] = {"baseline": sum(a) / n, "current": sum(b) / n, "draws": draws, "lost": lost,
                        "gained": gained, "shared": n}
    overall = sum(all_draws) / len(all_draws)
    out["overall"] = {
        "baseline": sum(v["baseline"] for v in out.values()) / len(all_draws),
        "current": sum(v["current"] for v in out.values()) / len(all_draws),
        "draws": overall,
        "lost": sum(v["lost"] for v in out.values()),
        "gained": sum(v["gained"] for v in out.values()),
        "shared": sum(v["shared"] for v in out.values()),
    }
    for entry in out.values():
        draws = entry.pop("draws")
        entry["delta"] = entry["current"] - entry["baseline"]
        entry["ci95"] = list(np.percentile(draws, [2.5, 97.5]))
        entry["p_drop"] = int(np.count_nonzero(draws >= 0)) / resamples
        entry["p_gain"] = int(np.count_nonzero(draws <= 0)) / resamples
    return out


def paired_fixture():
    # Few discordant pairs in some sections, so that many resamples land exactly on 0: the
    # difference between "<" and "<=" in p_gain / p_drop shows.
    old = {
        "harmlessness.bon": ones(30, 50),
        "harmlessness.pairwise": ones(80, 100),
        "helpfulness.bon": ones(20, 40),
        "helpfulness.pairwise": ones(150, 200),
    }
    new = {
        "harmlessness.bon": [True] * 29 + [False] + [True] + [False] * 19,  # lost 1, gained 1
        "harmlessness.pairwise": ones(70, 100),  # lost 10
        "helpfulness.bon": [True] * 20 + [True] * 3 + [False] * 17,  # gained 3
        "helpfulness.pairwise": [True] * 148 + [False] * 2 + [False] * 50,  # lost 2
    }
    return old, new


@pytest.mark.parametrize("seed", [0, 3])
def test_paired_comparison_numbers_per_section_and_overall(seed):
    old, new = paired_fixture()
    got = paired_comparison(old, new, seed=seed, resamples=1000)
    want = expected_paired(old, new, seed, 1000)
    assert set(got) == set(want)
    for metric, entry in want.items():
        assert got[metric]["lost"] == entry["lost"] and got[metric]["gained"] == entry["gained"]
        assert got[metric]["shared"] == entry["shared"]
        for name in ("baseline", "current", "delta"):
            assert got[metric][name] == pytest.approx(entry[name], abs=1e-15), (metric, name)
        for name in ("ci95", "p_drop", "p_gain"):
            assert got[metric][name] == entry[name], (metric, name)
    # The fixture does exercise ties at zero (else "<" and "<=" would agree).
    assert want["harmlessness.bon"]["p_gain"] + want["harmlessness.bon"]["p_drop"] > 1.2
    assert 0 < want["overall"]["p_gain"] < 1


def test_paired_comparison_agrees_with_a_plain_pair_bootstrap():
    old, new = paired_fixture()
    got = paired_comparison(old, new, seed=0, resamples=4000)["overall"]
    rng = np.random.default_rng(999)
    draws = np.zeros(4000)
    for section in old:
        a, b = np.array(old[section], dtype=float), np.array(new[section], dtype=float)
        idx = rng.integers(0, len(a), size=(4000, len(a)))
        draws += (b[idx].mean(axis=1) - a[idx].mean(axis=1)) / len(old)
    assert got["ci95"][0] == pytest.approx(np.percentile(draws, 2.5), abs=0.006)
    assert got["ci95"][1] == pytest.approx(np.percentile(draws, 97.5), abs=0.006)
    assert got["p_drop"] == pytest.approx(np.mean(draws >= 0), abs=0.03)
    assert got["p_gain"] == pytest.approx(np.mean(draws <= 0), abs=0.03)


# ----- the baseline gate -----------------------------------------------------------------


def outcomes(scenario_id, kind, values, start=0):
    return {f"{scenario_id}|{kind}|{i + start}": int(v) for i, v in enumerate(values)}


def gate_rows(old, new, *, max_drop, alpha, allow_empty=False, seed=0, resamples=1000, **extra):
    rows, account = compare_with_baseline(
        {"outcomes": new, "dataset": "d", **extra.get("summary", {})},
        {"outcomes": old, "dataset": "d", **extra.get("baseline", {})},
        GOAL_OF, max_drop=max_drop, alpha=alpha, seed=seed, resamples=resamples, allow_empty=allow_empty,
    )
    return {row.metric: row for row in rows}, account


# One section: baseline 30/40 right; the new run loses 6 and gains 1 -> delta exactly -0.125.
OLD = ones(30, 40)
NEW = [True] * 24 + [False] * 6 + [True] + [False] * 9


def one_section_p_drop(seed=0, resamples=1000):
    return expected_paired({"helpfulness.pairwise": OLD}, {"helpfulness.pairwise": NEW}, seed, resamples)[
        "helpfulness.pairwise"]["p_drop"]


def test_drop_exactly_max_drop_passes_and_just_above_fails():
    drop = 30 / 40 - 25 / 40
    assert drop == 0.125
    old, new = outcomes("code/a", "pairwise", OLD), outcomes("code/a", "pairwise", NEW)
    rows, _ = gate_rows(old, new, max_drop=drop, alpha=0.5)
    assert rows["helpfulness.pairwise"].status == PASS and rows["overall"].status == PASS
    rows, _ = gate_rows(old, new, max_drop=math.nextafter(drop, 0), alpha=0.5)
    assert rows["helpfulness.pairwise"].status == FAIL and rows["overall"].status == FAIL
    assert rows["overall"].value == 25 / 40 and rows["overall"].reference == "baseline 0.7500"


def test_p_exactly_alpha_passes_and_just_above_alpha_fails():
    p = one_section_p_drop()
    assert 0 < p < 0.5  # a drop that is neither certain nor hopeless
    old, new = outcomes("code/a", "pairwise", OLD), outcomes("code/a", "pairwise", NEW)
    rows, _ = gate_rows(old, new, max_drop=0.0, alpha=p)
    assert rows["helpfulness.pairwise"].status == PASS
    assert "drop not significant at alpha=" in rows["helpfulness.pairwise"].detail
    rows, _ = gate_rows(old, new, max_drop=0.0, alpha=math.nextafter(p, 1))
    assert rows["helpfulness.pairwise"].status == FAIL
    assert f"p={p:.3f}" in rows["helpfulness.pairwise"].detail


def test_baseline_gate_numbers_on_four_sections():
    old_plan, new_plan = paired_fixture()
    old, new = {}, {}
    for section in old_plan:
        goal, kind = section.split(".")
        old.update(outcomes(SECTION_SCENARIO[goal], kind, old_plan[section]))
        new.update(outcomes(SECTION_SCENARIO[goal], kind, new_plan[section]))
    rows, account = gate_rows(old, new, max_drop=0.01, alpha=0.05, seed=5)
    want = expected_paired(old_plan, new_plan, 5, 1000)
    for metric, entry in want.items():
        got = account["sections"][metric]
        assert (got["ci95"], got["p_drop"], got["p_gain"]) == (entry["ci95"], entry["p_drop"], entry["p_gain"])
        assert rows[metric].interval == entry["ci95"]
        dropped = entry["baseline"] - entry["current"] > 0.01
        assert rows[metric].status == (FAIL if dropped and entry["p_drop"] < 0.05 else PASS), metric


def test_a_baseline_sharing_no_samples_fails_unless_allowed():
    old = outcomes("chat/b", "pairwise", ones(5, 10))
    new = outcomes("harmlessness/s1", "pairwise", ones(3, 10))
    rows, account = gate_rows(old, new, max_drop=0.01, alpha=0.05)
    assert rows["overall"].status == FAIL
    assert "no samples shared with the baseline (10 in the baseline, 10 in this run)" in rows["overall"].detail
    assert "--rmb-gate-allow-empty" in rows["overall"].detail
    # Each side's own section compared nothing either; sections neither run has are not gates.
    assert rows["helpfulness.pairwise"].status == FAIL and rows["harmlessness.pairwise"].status == FAIL
    assert rows["helpfulness.bon"].status == NOT_EVALUATED and rows["harmlessness.bon"].status == NOT_EVALUATED
    assert any("nothing was compared" in note for note in account["notes"])
    rows, _ = gate_rows(old, new, max_drop=0.01, alpha=0.05, allow_empty=True)
    assert {row.status for row in rows.values()} == {NOT_EVALUATED}


def test_a_baseline_from_a_failed_run_is_refused_with_its_reason(tmp_path):
    path = tmp_path / "failed.json"
    path.write_text(json.dumps({"status": "error", "reason": "model could not be loaded: no such file"}))
    with pytest.raises(GateError, match=r"--rmb-baseline .*failed\.json: .*failed.*model could not be loaded"):
        load_baseline(path)


# ----- threshold gates ---------------------------------------------------------------------


@pytest.mark.parametrize(("op", "passes"), [(">=", True), (">", False), ("<=", True), ("<", False)])
def test_each_threshold_operator_exactly_at_the_bar(op, passes):
    summary = {"overall": 0.75, "overall_ci95": [0.7, 0.8],
               "sections": {"helpfulness.bon": {"accuracy": 3 / 7, "ci95": None}}, "tasks": {}, "scenarios": {}}
    gates = [parse_gate(f"overall{op}0.75", set(), set()), parse_gate(f"helpfulness.bon {op} {3 / 7!r}", set(), set())]
    results = evaluate_thresholds(gates, summary, allow_empty=False)
    assert [r.status for r in results] == [PASS if passes else FAIL] * 2
    # Off the bar the answer flips for the strict operators only where it should.
    above = evaluate_thresholds([parse_gate(f"overall{op}0.74", set(), set())], summary, False)[0]
    assert above.status == (PASS if op.startswith(">") else FAIL)


@pytest.mark.parametrize(
    ("text", "hint"),
    [("overall>=70", "overall>=0.70"), ("overall > 7", "overall>0.07"),
     ("helpfulness.bon<=85.5", "helpfulness.bon<=0.855"), ("overall<100", "overall<1.00")],
)
def test_percentages_are_refused_with_the_fraction_to_write(text, hint):
    with pytest.raises(GateError, match="thresholds are fractions between 0 and 1") as info:
        parse_gate(text, set(), set())
    assert f"write '{hint}'" in str(info.value)


@pytest.mark.parametrize("text", ["overall>=-0.1", "overall>=1.0001", "overall>=1e9"])
def test_other_bars_outside_0_1_are_refused(text):
    with pytest.raises(GateError, match="thresholds are fractions between 0 and 1"):
        parse_gate(text, set(), set())


@pytest.mark.parametrize("text", ["overall>=0", "overall<=1", "overall>=1.0", "overall>0.7"])
def test_bars_in_0_1_are_accepted(text):
    assert 0 <= parse_gate(text, set(), set()).bar <= 1


# ----- provenance ----------------------------------------------------------------------------


def test_provenance_differences_are_human_lines():
    a = {"pytest_rmb": "0.1.0", "model": "length", "seed": 0, "dtype": "float32",
         "data_files": {"Pairwise_set/Helpfulness/Chat/Discussion.json": "aa", "BoN_set/Harmlessness/S1.json": "bb",
                        "Pairwise_set/Harmlessness/S2.json": "cc"}}
    b = {"pytest_rmb": "0.1.0", "model": "random", "seed": 0, "revision": "abc123",
         "data_files": {"Pairwise_set/Helpfulness/Chat/Discussion.json": "zz", "BoN_set/Harmlessness/S1.json": "bb",
                        "BoN_set/Harmlessness/S3.json": "dd"}}
    assert provenance_differences(a, b) == [
        "dtype: float32 -> (not recorded)",
        "model: length -> random",
        "revision: (not recorded) -> abc123",
        "data file Pairwise_set/Helpfulness/Chat/Discussion.json changed",
        "data files read only by the baseline: Pairwise_set/Harmlessness/S2.json",
        "data files read only by this run: BoN_set/Harmlessness/S3.json",
    ]
    assert provenance_differences(a, dict(a)) == []
    assert provenance_differences(None, None) == [] and provenance_differences({}, None) == []
    assert provenance_differences(None, b) == ["no provenance recorded in the baseline; cannot tell what else differs"]
    assert provenance_differences(a, {}, ("A", "B")) == ["no provenance recorded in B; cannot tell what else differs"]
    before = {"data_files": {f"f{i:02}.json": "old" for i in range(15)}}
    after = {"data_files": {**{f"f{i:02}.json": "new" for i in range(15)}, "g1.json": "x", "g2.json": "y"}}
    lines = provenance_differences(before, after, ("A", "B"))
    assert lines[:10] == [f"data file f{i:02}.json changed" for i in range(10)]
    assert lines[10:] == ["... and 5 more data files changed", "data files read only by B: g1.json and 1 more"]


def test_provenance_differences_are_baseline_gate_notes():
    old = outcomes("code/a", "pairwise", OLD)
    _, account = gate_rows(old, dict(old), max_drop=0.01, alpha=0.05,
                           baseline={"provenance": {"model": "length", "max_length": 4096}},
                           summary={"provenance": {"model": "./ckpt", "max_length": 4096}})
    assert account["notes"] == ["provenance: model: length -> ./ckpt"]


# ----- the null (length) baseline --------------------------------------------------------------


def test_null_accuracy_per_section_task_and_scenario():
    plan = {("code/a", "pairwise"): ones(6, 10), ("chat/b", "pairwise"): ones(1, 5),
            ("code/a", "bon"): ones(2, 4), ("harmlessness/s1", "pairwise"): ones(7, 8)}
    null = {("code/a", "pairwise"): ones(3, 10), ("chat/b", "pairwise"): ones(5, 5),
            ("code/a", "bon"): ones(2, 4), ("harmlessness/s1", "pairwise"): [False] * 8}
    summary = summarize(make_records(plan, null), SCENARIOS, resamples=10)
    section = summary["sections"]["helpfulness.pairwise"]
    assert (section["accuracy"], section["null_accuracy"], section["beats_null"]) == (7 / 15, 8 / 15, False)
    bon = summary["sections"]["helpfulness.bon"]
    assert (bon["null_accuracy"], bon["beats_null"]) == (0.5, False)  # a tie does not beat it
    harm = summary["sections"]["harmlessness.pairwise"]
    assert (harm["null_accuracy"], harm["beats_null"]) == (0.0, True)
    assert "null_accuracy" not in summary["sections"]["harmlessness.bon"]  # no samples
    assert summary["tasks"]["code"]["pairwise"]["null_accuracy"] == 0.3
    assert summary["tasks"]["chat"]["pairwise"]["beats_null"] is False
    assert summary["scenarios"]["code/a"]["bon"]["null_accuracy"] == 0.5
    assert summary["overall_null"] == (8 / 15 + 0.5 + 0.0) / 3
    assert summary["overall_beats_null"] is ((7 / 15 + 0.5 + 7 / 8) / 3 > summary["overall_null"])


def test_a_tie_with_the_length_baseline_does_not_beat_it_overall():
    plan = {("code/a", "pairwise"): ones(3, 4), ("harmlessness/s1", "bon"): ones(1, 4)}
    null = {("code/a", "pairwise"): ones(1, 4), ("harmlessness/s1", "bon"): ones(3, 4)}
    summary = summarize(make_records(plan, null), SCENARIOS, resamples=10)
    assert summary["overall"] == summary["overall_null"] == 0.5
    assert summary["overall_beats_null"] is False
    assert summary["sections"]["helpfulness.pairwise"]["beats_null"] is True


def test_the_default_seed_is_0_and_uids_may_hold_the_separator():
    records = four_section_records()
    assert summarize(records, SCENARIOS, resamples=50) == summarize(records, SCENARIOS, seed=0, resamples=50)
    old, new = paired_fixture()
    assert paired_comparison(old, new, resamples=50) == paired_comparison(old, new, seed=0, resamples=50)
    assert outcome_records({"code/a|bon|x|y": 1}, ["code/a|bon|x|y"]) == [
        {"scenario": "code/a", "kind": "bon", "uid": "x|y", "correct": True}]


def test_records_without_null_correct_have_no_null_numbers():
    plan = {("code/a", "pairwise"): ones(6, 10)}
    summary = summarize(make_records(plan), SCENARIOS, resamples=10)
    assert "null_accuracy" not in summary["sections"]["helpfulness.pairwise"]
    assert "overall_null" not in summary
    assert summary["tasks"]["code"]["pairwise"] == {"correct": 6, "total": 10, "accuracy": 0.6}
    # A group is given a null accuracy only when every one of its samples carries the outcome.
    mixed = make_records(plan, {("code/a", "pairwise"): ones(5, 10)})
    del mixed[0]["null_correct"]
    assert "null_accuracy" not in summarize(mixed, SCENARIOS, resamples=10)["sections"]["helpfulness.pairwise"]


def render(table, width=100):
    """As the run's renderer prints a table: at this width, or wider when its numbers need it."""
    buffer = io.StringIO()
    fit_width(Console(file=buffer, width=width, color_system=None), table).print(table)
    return buffer.getvalue()


def test_tables_show_the_length_baseline_and_mark_where_it_is_not_beaten():
    plan = {("code/a", "pairwise"): ones(6, 10), ("harmlessness/s1", "pairwise"): ones(7, 8)}
    null = {("code/a", "pairwise"): ones(8, 10), ("harmlessness/s1", "pairwise"): ones(1, 8)}
    summary = summarize(make_records(plan, null), SCENARIOS, resamples=10)
    text = render(headline_table(summary))
    help_line = next(line for line in text.splitlines() if "Helpfulness Pairwise" in line)
    harm_line = next(line for line in text.splitlines() if "Harmlessness Pairwise" in line)
    assert "Length" in text and "0.6000" in help_line and "0.8000!" in help_line
    assert "0.8750" in harm_line and "0.1250" in harm_line and "!" not in harm_line
    legend = " ".join(" ".join(legend_lines(table_headers(headline_table(summary)), set(), 80)).split())
    assert "Length: the length baseline" in legend and "where the model does not beat it" in legend
    hidden = render(headline_table(summary, null_baseline=False))
    assert "Length" not in hidden and "0.8000" not in hidden
    tasks = render(grouped_table("Per task", "Task", summary["tasks"], "name"))
    assert "0.8000!" in next(line for line in tasks.splitlines() if "Code" in line)
    markdown = markdown_document({**summary, "model": "m", "dataset": "d", "gates": [], "missing": [], "errors": []})
    assert "| Section | Accuracy | Length | 95% CI |" in markdown and "| 0.6000 | 0.8000! |" in markdown
    plain = summarize(make_records(plan), SCENARIOS, resamples=10)
    assert "Length" not in render(headline_table(plain))


def test_run_tables_wrap_names_never_numbers():
    plan = {("code/a", "pairwise"): ones(8071, 10067), ("harmlessness/s1", "bon"): ones(1111, 1677)}
    null = {key: ones(len(v) // 2, len(v)) for key, v in plan.items()}
    summary = summarize(make_records(plan, null), SCENARIOS, resamples=10)
    numbers = [f"{8071 / 10067:.4f}", "8071/10067", f"{1111 / 1677:.4f}", "1111/1677",
               f"{5033 / 10067:.4f}", f"{838 / 1677:.4f}"]
    for width in (40, 60, 80):
        text = render(headline_table(summary), width)
        for number in numbers:
            assert number in text, (width, number)
        assert "…" not in text
    assert max(len(line) for line in render(headline_table(summary), 80).splitlines()) <= 80
    wide = render(headline_table(summary), 200)
    assert "Helpfulness Pairwise" in wide


# ----- the engine's out-of-memory path ---------------------------------------------------------


def pair_sample(uid, prompt, chosen, rejected):
    return PairSample("s/a", uid, (Message("user", prompt),), Response("m", chosen), Response("m", rejected))


class OutOfMemoryError(Exception):
    """Matches by its name only: the message says nothing about memory."""


class OOMScorer:
    def __init__(self, error, fits):
        self.error, self.fits, self.attempts = error, fits, []

    def score(self, batch):
        self.attempts.append(len(batch))
        if len(batch) > self.fits:
            raise self.error
        return [float(len(r.response)) for r in batch]


@pytest.mark.parametrize(
    "error",
    [OutOfMemoryError("allocation failed"), RuntimeError("CUDA Out Of Memory. Tried to allocate 2 GiB"),
     RuntimeError("HIP out of memory")],
    ids=["name-only", "message-only-mixed-case", "message-only"],
)
def test_out_of_memory_is_recognised_by_name_or_message_and_halves(error):
    assert _is_out_of_memory(error)
    samples = [pair_sample(str(i), "q", "x" * (i + 1), "") for i in range(4)]
    scorer = OOMScorer(error, fits=2)
    engine = Engine(scorer, {"s/a": samples}, max_batch_size=100)
    assert engine.scores(samples[3]) == (4.0, 0.0)
    assert scorer.attempts[:2] == [5, 2] and engine.totals.oom_retries == 2


def test_other_errors_are_not_out_of_memory_and_are_not_retried():
    error = RuntimeError("device-side assert triggered")
    assert not _is_out_of_memory(error) and not _is_out_of_memory(MemoryError("no"))
    samples = [pair_sample(str(i), "q", "x" * (i + 1), "") for i in range(4)]
    scorer = OOMScorer(error, fits=2)
    with pytest.raises(RuntimeError, match="device-side assert"):
        Engine(scorer, {"s/a": samples}, max_batch_size=100).scores(samples[0])
    assert scorer.attempts == [5]


@pytest.mark.parametrize("error", [OutOfMemoryError("allocation failed"), RuntimeError("CUDA out of memory")])
def test_a_single_text_out_of_memory_is_raised_not_retried(error):
    samples = [pair_sample("1", "q", "a", "b")]
    scorer = OOMScorer(error, fits=0)
    with pytest.raises(type(error)) as info:
        Engine(scorer, {"s/a": samples}, max_batch_size=1).scores(samples[0])
    assert info.value is error
    assert scorer.attempts == [1]
    scorer = OOMScorer(error, fits=0)
    with pytest.raises(type(error)):
        Engine(scorer, {"s/a": samples}, max_batch_size=2).scores(samples[0])
    assert scorer.attempts == [2, 1]  # halved once, then the single text's error is the answer


# ----- the null baseline in a real run ----------------------------------------------------------


def test_a_run_shows_the_length_baseline_beside_every_section_unless_told_not_to(pytester):
    from tests.helpers import SAMPLE_DATA, all_files, expected_correct

    right, total = {}, {}
    for relative, raw in all_files(SAMPLE_DATA).items():
        kind = "pairwise" if relative.startswith("Pairwise") else "bon"
        section = f"{relative.split('/')[1].lower()}.{kind}"
        for record in raw:
            total[section] = total.get(section, 0) + 1
            right[section] = right.get(section, 0) + expected_correct(record)[0]
    args = ("-p", "no:cacheprovider", "--rmb-data", "sample", "--rmb-model", "random")
    result = pytester.runpytest(*args, "--rmb-json", "s.json", "--rmb-markdown", "s.md")
    summary = json.loads((pytester.path / "s.json").read_text())
    for section in SECTION_ORDER:
        entry = summary["sections"][section]
        null = right[section] / total[section]
        assert entry["null_accuracy"] == null
        assert entry["beats_null"] is (entry["accuracy"] > null)
        mark = " " if entry["beats_null"] else "!"
        goal, kind = section.split(".")
        title = f"{goal.capitalize()} {'Pairwise' if kind == 'pairwise' else 'BoN'}"
        result.stdout.fnmatch_lines([f"*{title}*{entry['accuracy']:.4f}*{null:.4f}{mark}*"])
    assert "| Length |" in (pytester.path / "s.md").read_text()
    hidden = pytester.runpytest(*args, "--rmb-no-null-baseline", "--rmb-markdown", "h.md")
    assert "Length" not in hidden.stdout.str() and "| Length |" not in (pytester.path / "h.md").read_text()
    pytester.makeini("[pytest]\nrmb_null_baseline = false\n")
    assert "Length" not in pytester.runpytest(*args).stdout.str()


# ----- small rules the gate also depends on ----------------------------------------------------


@pytest.mark.parametrize(("text", "hint"), [("overall>=1.5", "overall>=0.015"), ("overall>=7e1", "overall>=0.70")])
def test_percent_hint_edges(text, hint):
    with pytest.raises(GateError) as info:
        parse_gate(text, set(), set())
    assert f"write '{hint}'" in str(info.value)


def test_task_and_scenario_thresholds_read_their_own_tables():
    summary = {"overall": None, "overall_ci95": None, "sections": {},
               "tasks": {"code": {"bon": {"accuracy": 0.25}}},
               "scenarios": {"code/a": {"bon": {"accuracy": 0.75}}}}
    gates = [parse_gate("task:code.bon>=0.25", set(), {"code"}),
             parse_gate("scenario:code/a.bon>=0.75", {"code/a"}, set())]
    assert [(r.value, r.status) for r in evaluate_thresholds(gates, summary, False)] == [(0.25, PASS), (0.75, PASS)]


@pytest.mark.parametrize("document", [[1, 2], {"sections": {}}, {"outcomes": {}}, "text"])
def test_documents_that_are_not_summaries_are_refused(tmp_path, document):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(document))
    with pytest.raises(GateError, match="not a pytest-rmb --rmb-json summary"):
        load_baseline(path)


def test_uids_with_the_separator_keep_their_section():
    from pytest_rmb.gate import outcomes_by_section

    grouped = outcomes_by_section({"code/a|bon|x|y": 1}, GOAL_OF)
    assert grouped["helpfulness.bon"] == {"code/a|bon|x|y": True}


def test_exactly_ten_changed_files_are_all_listed():
    before = {"data_files": {f"f{i}.json": "old" for i in range(10)}}
    after = {"data_files": {f"f{i}.json": "new" for i in range(10)}}
    assert len(provenance_differences(before, after)) == 10


def test_default_is_strict_notes_and_no_spurious_not_significant():
    old = outcomes("chat/b", "pairwise", ones(5, 10))
    new = outcomes("harmlessness/s1", "pairwise", ones(3, 10))
    rows, _ = compare_with_baseline({"outcomes": new}, {"outcomes": old}, GOAL_OF, max_drop=0.01, alpha=0.05,
                                    seed=0, resamples=100)
    assert rows[0].status == FAIL
    # Partly shared: the note says how much; an unchanged section carries no "not significant" remark.
    both = {**outcomes("code/a", "pairwise", OLD), **outcomes("chat/b", "pairwise", ones(3, 5))}
    _, account = gate_rows(both, outcomes("code/a", "pairwise", OLD), max_drop=0.01, alpha=0.05)
    assert account["notes"] == [
        "compared on the 40 samples both runs share; 5 only in the baseline, 0 only in this run"]
    rows, _ = gate_rows(both, outcomes("code/a", "pairwise", OLD), max_drop=0.01, alpha=0.05)
    assert rows["helpfulness.pairwise"].status == PASS and "not significant" not in rows["helpfulness.pairwise"].detail
