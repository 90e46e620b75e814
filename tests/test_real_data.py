"""End to end over the real RMB data in ../shared (skipped when it is not there).

Expected values come from the raw JSON files through the json module alone, never through
pytest_rmb, so that a loader or metric bug cannot agree with itself.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.helpers import SHARED_DATA, all_files, expected_correct

pytestmark = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"real RMB data not found at {SHARED_DATA}"
)

ABSENT_HERE = {
    "Pairwise_set/Harmlessness/S11.json",
    "Pairwise_set/Helpfulness/Brainstorming/Idea Development.json",
    "Pairwise_set/Helpfulness/Generation/Creative Writing.json",
}


def test_length_baseline_on_the_real_data_matches_an_independent_computation(pytester):
    raw = all_files(SHARED_DATA)
    correct, total, by_uid = Counter(), Counter(), {}
    for relative, records in raw.items():
        kind = "pairwise" if relative.startswith("Pairwise_set") else "bon"
        section = f"{relative.split('/')[1].lower()}.{kind}"
        for record in records:
            ok, scores = expected_correct(record)
            total[section] += 1
            correct[section] += ok
            by_uid[kind, record.get("pair_uid") or record.get("bon_uid")] = (ok, scores)

    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", str(SHARED_DATA),
        "--rmb-json", "summary.json", "--rmb-jsonl", "samples.jsonl",
    )
    assert result.ret == 0
    summary = json.loads((pytester.path / "summary.json").read_text())

    assert sum(total.values()) == 18329
    for section, count in total.items():
        entry = summary["sections"][section]
        assert (entry["correct"], entry["total"]) == (correct[section], count), section
    overall = sum(correct[s] / total[s] for s in total) / 4
    assert summary["overall"] == pytest.approx(overall, abs=1e-12)
    assert {m["file"] for m in summary["missing"]} == ABSENT_HERE
    assert summary["errors"] == []
    # RMB holds 41,586 response slots; ~18,400 unique texts among them are scored once each.
    slots = sum(len(s) for _, s in by_uid.values())
    assert summary["engine"]["response_slots"] == slots
    assert summary["engine"]["texts_scored"] < slots / 2

    records = [json.loads(line) for line in (pytester.path / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 18329
    for record in records:
        ok, scores = by_uid[record["kind"], record["uid"]]
        assert (record["correct"], record["scores"]) == (ok, scores)

    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == sum(correct.values())
    assert outcomes["missed"] == 18329 - sum(correct.values())
    assert outcomes["skipped"] == len(ABSENT_HERE)


def test_blank_answers_of_s5_are_scored_not_rejected(pytester):
    raw = {r["pair_uid"]: r for r in all_files(SHARED_DATA)["Pairwise_set/Harmlessness/S5.json"]}
    blank = {uid: raw[uid]["reject"]["answer"] for uid in ("13586", "13587")}
    assert all(text.strip() == "" for text in blank.values())  # whitespace only upstream
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", str(SHARED_DATA),
        "-k", "s5_specialized_advice and (13586 or 13587)", "--rmb-jsonl", "s5.jsonl",
    )
    assert result.ret == 0
    records = [json.loads(line) for line in (pytester.path / "s5.jsonl").read_text().splitlines()]
    assert [(r["uid"], r["scores"][1]) for r in records] == [(uid, float(len(t))) for uid, t in blank.items()]
