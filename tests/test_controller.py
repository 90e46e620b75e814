"""What the controller makes of the reports it hears (controller.RunResults), with reports built by hand
the way pytest-xdist delivers them: plain values under the wire's names."""

from __future__ import annotations

from types import SimpleNamespace

from pytest_rmb.controller import RunResults
from pytest_rmb.wire import Message

NODE = "rmb/chat/discussion::test_pairwise[{}]"
IDENTITY = {"scenario": "chat/discussion", "kind": "pairwise"}


def report(uid, when="call", outcome="passed", longrepr=None, **messages):
    properties = [(Message[name.upper()].value, value) for name, value in messages.items()]
    return SimpleNamespace(nodeid=NODE.format(uid), when=when, failed=outcome == "failed",
                           passed=outcome == "passed", longrepr=longrepr, user_properties=properties)


def record(uid, correct):
    return {"scenario": "chat/discussion", "kind": "pairwise", "uid": str(uid), "correct": correct}


def test_hits_misses_and_errors_are_told_apart():
    results = RunResults()
    results.add(report(1, result=record(1, True), engine={"batches": 2, "texts_scored": 4}))
    results.add(report(2, outcome="failed", longrepr="chosen 1 <= rejected 2", result=record(2, False),
                       engine={"batches": 1, "texts_scored": 1}))
    results.add(report(3, outcome="failed", longrepr="ValueError: boom\nline 2", item=IDENTITY))
    results.add(report(4, outcome="failed", longrepr="ValueError: boom again", item=IDENTITY))
    assert [r["uid"] for r in results.records] == ["1", "2"]
    assert results.misses == [(NODE.format(2), "chosen 1 <= rejected 2")]
    assert results.other_failures == 2
    assert results.errors == {("chat/discussion", "pairwise"): {
        "scenario": "chat/discussion", "kind": "pairwise", "items": 2, "message": "ValueError: boom\nline 2"}}
    assert (results.engine.batches, results.engine.texts_scored) == (3, 5)


def test_a_crashed_item_is_placed_by_the_identity_its_setup_report_carried():
    results = RunResults()
    results.add(report(5, when="setup", item=IDENTITY))
    # xdist's report for a worker that died mid-item carries nothing of ours.
    results.add(report(5, outcome="failed", longrepr="worker 'gw0' crashed while running"))
    assert results.errors[("chat/discussion", "pairwise")]["items"] == 1
    assert results.misses == []


def test_first_model_info_load_error_and_missing_entry_win_and_inputs_are_kept_once():
    results = RunResults()
    missing = {"scenario": "chat/discussion", "kind": "bon", "file": "BoN_set/x.json"}
    shown = [{"selector": "7", "scenario": "chat/discussion", "kind": "pairwise", "uid": "7", "lines": ["a"]}]
    for worker in ("gw0", "gw1"):
        results.add(report(6, when="setup", missing=missing))
        results.add(report(6, result=record(6, True), model_info={"kind": "pointwise-model", "worker": worker},
                           shown_input=shown))
        results.add(report(7, outcome="failed", longrepr="x", load_error=f"cannot load on {worker}"))
    assert results.model_info == {"kind": "pointwise-model", "worker": "gw0"}
    assert results.load_error == "cannot load on gw0"
    assert list(results.missing.values()) == [missing]
    assert list(results.shown_input.values()) == shown


def test_an_item_ran_when_its_teardown_reported_and_a_crashed_one_is_named():
    results = RunResults()
    for uid in (1, 2):
        for when in ("setup", "call", "teardown"):
            results.add(report(uid, when=when))
    results.add(report(3, when="setup", item=IDENTITY))
    # xdist's report for the item a worker died in: no phase of pytest's own.
    results.add(report(3, when="???", outcome="failed", longrepr="worker 'gw0' crashed while running"))
    assert results.ran == 2
    assert results.crashed == [NODE.format(3)]
    assert results.errors[("chat/discussion", "pairwise")]["items"] == 1
