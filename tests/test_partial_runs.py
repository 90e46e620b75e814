"""Runs that did not reach every selected item, and runs on data with files missing, as users start
them: never taken for a complete run, never a passed gate.

What a run covered is counted here from pytest's own closing line (``15 passed, 1 missed``) and from
``--collect-only``, and the missing files from the folder the test itself built: never from
pytest-rmb's summary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_rmb
from tests.helpers import SAMPLE_DATA, ctrl_c_reaches_it, run_rmb
from tests.judge_stub import StubServer
from tests.test_scale import CRASH_ONCE  # the model that kills its worker once

# The package under test, whichever checkout it is imported from: subprocesses import this one.
PACKAGE_ROOT = str(Path(pytest_rmb.__file__).resolve().parents[1])
SAMPLE_ITEMS = 147  # the bundled sample: one item per sample, no file missing
SAMPLE_FILES = sorted(str(path.relative_to(SAMPLE_DATA)) for path in SAMPLE_DATA.glob("*_set/**/*.json"))
# Outcomes in pytest's closing line that stand for an item that ran.
RAN = ("passed", "missed", "failed", "skipped", "errors", "error")


def ran_items(outcomes: dict[str, int]) -> int:
    return sum(outcomes.get(name, 0) for name in RAN)


def selected_items(pytester, *args: str) -> int:
    """Items a selection holds, as pytest's own --collect-only lists them."""
    listed = run_rmb(pytester, "--collect-only", "-q", *args)
    return sum("::" in line for line in listed.outlines)


def summary_of(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def subprocess_env(pytester) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([PACKAGE_ROOT, str(pytester.path)])}


def rmb_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rmb-data", "sample", *args]


def closing_outcomes(output: str) -> dict[str, int]:
    """pytest's closing line (``=== 15 passed, 1 missed in 0.2s ===``) as counts."""
    line = next(line for line in reversed(output.splitlines()) if re.search(r"\d+ \w+.* in [\d.]+s", line))
    return {name: int(count) for count, name in re.findall(r"(\d+) (\w+)", line.split(" in ")[0])}


# --- 7. runs that stopped before every selected item ran ------------------------------------------


def test_x_stops_at_the_first_miss_and_the_run_is_partial_with_no_gate_passed_or_failed(pytester):
    result = run_rmb(pytester, "--rmb-model", "length", "--rmb-data", "sample", "-x",
                     "--rmb-gate", "overall>=0.5", "--rmb-gate", "overall>=0.99",
                     "--rmb-json", "x.json", "--rmb-markdown", "x.md")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    outcomes = result.parseoutcomes()
    ran = ran_items(outcomes)
    assert outcomes["missed"] == 1 and 0 < ran < SAMPLE_ITEMS
    summary = summary_of(pytester.path / "x.json")
    assert (summary["status"], summary["partial"]) == ("partial", True)
    assert summary["items"] == {"selected": SAMPLE_ITEMS, "ran": ran}
    assert summary["stop_reason"] == "stopping after 1 failures"
    assert summary["samples"] == outcomes["passed"] + outcomes["missed"]
    # One bar the numbers clear, one they do not: neither is judged on part of the selection.
    assert summary["overall"] > 0.5
    assert [gate["status"] for gate in summary["gates"]] == ["NOT EVALUATED", "NOT EVALUATED"]
    account = f"partial run: {ran} of {SAMPLE_ITEMS} selected items ran (stopping after 1 failures)"
    assert {gate["detail"] for gate in summary["gates"]} == {f"{account}; a partial run's gates are not evaluated"}
    out = result.stdout.str()
    assert "PASS" not in out and "FAIL" not in out and "all gates passed" not in out
    result.stdout.fnmatch_lines([
        f"*= RMB: length on sample (*), PARTIAL RUN: {ran} of {SAMPLE_ITEMS} items ran =*",
        "PARTIAL RESULTS: the run was interrupted before every item ran.",
        f"rmb: {account}; its gates are not evaluated",
        f"RMB accuracy - PARTIAL RUN: {ran} of {SAMPLE_ITEMS} items ran*",
    ])
    result.stdout.fnmatch_lines([f"rmb: 2 gate(s) NOT EVALUATED: {account}"])
    assert f"**Partial results: {account}; its gates are not evaluated.**" in (pytester.path / "x.md").read_text()


def test_maxfail_counts_the_items_selected_after_deselection(pytester):
    selection = ("-m", "helpfulness", "--deselect", "rmb/chat/discussion")
    selected = selected_items(pytester, "--rmb-model", "length", "--rmb-data", "sample", *selection)
    assert 0 < selected < SAMPLE_ITEMS
    result = run_rmb(pytester, "--rmb-model", "length", "--rmb-data", "sample", *selection, "--maxfail", "2",
                     "--rmb-gate", "helpfulness.pairwise>=0.5", "--rmb-json", "m.json")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    outcomes = result.parseoutcomes()
    assert outcomes["missed"] == 2
    summary = summary_of(pytester.path / "m.json")
    assert summary["status"] == "partial"
    assert summary["items"] == {"selected": selected, "ran": ran_items(outcomes)}
    assert summary["stop_reason"] == "stopping after 2 failures"
    assert [gate["status"] for gate in summary["gates"]] == ["NOT EVALUATED"]


def test_a_selection_that_ran_to_the_end_is_complete_whatever_was_deselected(pytester):
    selection = ("-k", "chat and not discussion", "--deselect", "rmb/chat/casual_conversation::test_bon")
    selected = selected_items(pytester, "--rmb-model", "length", "--rmb-data", "sample", *selection)
    result = run_rmb(pytester, "--rmb-model", "length", "--rmb-data", "sample", *selection,
                     "--rmb-gate", "overall>=0.5", "--rmb-json", "k.json")
    assert result.ret == pytest.ExitCode.OK
    assert ran_items(result.parseoutcomes()) == selected
    summary = summary_of(pytester.path / "k.json")
    assert (summary["status"], summary["partial"], summary["stop_reason"]) == ("ok", False, None)
    assert summary["items"] == {"selected": selected, "ran": selected}
    assert [gate["status"] for gate in summary["gates"]] == ["PASS"]
    result.stdout.fnmatch_lines(["rmb: all gates passed"])


def test_x_under_xdist_is_partial_too(pytester):
    done = subprocess.run(
        rmb_command("--rmb-model", "length", "-n", "2", "-x", "--rmb-gate", "overall>=0.5", "--rmb-json", "n.json"),
        cwd=pytester.path, env=subprocess_env(pytester), capture_output=True, text=True, timeout=300)
    assert done.returncode == pytest.ExitCode.INTERRUPTED, done.stdout[-3000:]
    ran = ran_items(closing_outcomes(done.stdout))
    summary = summary_of(pytester.path / "n.json")
    assert summary["status"] == "partial" and summary["stop_reason"] == "stopping after 1 failures"
    # The controller collects nothing itself: the count comes from the workers' collections.
    assert summary["items"] == {"selected": SAMPLE_ITEMS, "ran": ran} and ran < SAMPLE_ITEMS
    assert [gate["status"] for gate in summary["gates"]] == ["NOT EVALUATED"]


def test_a_worker_that_crashed_leaves_a_partial_run_that_names_the_item(pytester):
    pytester.makepyfile(crash_once=CRASH_ONCE)
    env = {**subprocess_env(pytester), "CRASH_MARKER": str(pytester.path / "crashed")}
    done = subprocess.run(
        rmb_command("--rmb-model", "python:crash_once:make", "-n", "2", "--rmb-gate", "overall>=0.5",
                    "--rmb-json", "c.json"),
        cwd=pytester.path, env=env, capture_output=True, text=True, timeout=300)
    assert (pytester.path / "crashed").exists()
    assert done.returncode == pytest.ExitCode.INTERRUPTED, done.stdout[-3000:]
    summary = summary_of(pytester.path / "c.json")
    # The replacement worker ran every other item; the one the worker died in has no result.
    assert summary["items"] == {"selected": SAMPLE_ITEMS, "ran": SAMPLE_ITEMS - 1}
    assert summary["samples"] == SAMPLE_ITEMS - 1
    assert re.fullmatch(r"a pytest-xdist worker crashed while running rmb/chat/discussion::test_\w+\[\w+\]",
                        summary["stop_reason"]), summary["stop_reason"]
    assert [gate["status"] for gate in summary["gates"]] == ["NOT EVALUATED"]


INTERRUPTING = '''
class Interrupting:
    """Raises KeyboardInterrupt, as Ctrl-C inside a model's own code does, at Chat / Discussion."""

    def score(self, batch):
        if any("Is it worth learning Latin" in r.conversation[-1].content for r in batch):
            raise KeyboardInterrupt
        return [float(len(r.response)) for r in batch]

def make():
    return Interrupting()
'''


def test_a_keyboard_interrupt_inside_the_model_is_a_partial_run(pytester):
    pytester.makepyfile(interrupting=INTERRUPTING)
    done = subprocess.run(
        rmb_command("--rmb-model", "python:interrupting:make", "--rmb-gate", "overall>=0.5", "--rmb-json", "i.json",
                    "--rmb-jsonl", "i.jsonl"),
        cwd=pytester.path, env=subprocess_env(pytester), capture_output=True, text=True, timeout=300,
        preexec_fn=ctrl_c_reaches_it)
    assert done.returncode == pytest.ExitCode.INTERRUPTED, done.stdout[-3000:]
    ran = ran_items(closing_outcomes(done.stdout))
    summary = summary_of(pytester.path / "i.json")
    assert summary["status"] == "partial" and summary["stop_reason"] == "interrupted: KeyboardInterrupt"
    assert summary["items"] == {"selected": SAMPLE_ITEMS, "ran": ran} and 0 < ran < SAMPLE_ITEMS
    assert len((pytester.path / "i.jsonl").read_text().splitlines()) == summary["samples"] > 0
    assert [gate["status"] for gate in summary["gates"]] == ["NOT EVALUATED"]


@pytest.fixture
def judge_stub(tmp_path):
    stub = StubServer(tmp_path, "longer").start()
    yield stub
    stub.stop()


def test_a_judge_budget_that_stops_the_run_leaves_a_partial_run(pytester, judge_stub):
    result = run_rmb(pytester, "--rmb-model", "openai:stub-judge", "--rmb-model-arg",
                     f"base_url={judge_stub.base_url}", "--rmb-data", "sample", "-m", "pairwise",
                     "--rmb-model-arg", "budget_tokens=3000", "--rmb-model-arg", "max_tokens=40",
                     "--rmb-model-arg", "concurrency=2", "--rmb-json", "b.json")
    summary = summary_of(pytester.path / "b.json")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert summary["status"] == "partial" and "budget_tokens=3000 reached" in summary["stop_reason"]
    assert summary["items"]["ran"] < summary["items"]["selected"]


# --- 8. data with files missing -------------------------------------------------------------------

ABSENT = ["BoN_set/Helpfulness/Chat/Discussion.json", "Pairwise_set/Harmlessness/S5.json"]


@pytest.fixture
def partial_copy(pytester) -> Path:
    """The bundled sample without two of its 98 files, as a fetch that stopped half-way leaves it."""
    data = pytester.path / "data"
    shutil.copytree(SAMPLE_DATA, data)
    for relative in ABSENT:
        (data / relative).unlink()
    return data


def test_a_run_on_data_with_files_missing_says_so_everywhere_and_still_passes(pytester, partial_copy):
    result = run_rmb(pytester, "--rmb-model", "length", "--rmb-data", "data", "--rmb-json", "s.json",
                     "--rmb-markdown", "s.md")
    assert result.ret == pytest.ExitCode.OK
    summary = summary_of(pytester.path / "s.json")
    assert summary["status"] == "ok" and summary["complete"] is False
    assert sorted(entry["file"] for entry in summary["missing"]) == ABSENT
    assert summary["items"]["selected"] == summary["items"]["ran"] == ran_items(result.parseoutcomes())
    wanted = len(SAMPLE_FILES)
    result.stdout.fnmatch_lines([
        f"rmb: model length, data {partial_copy}, 49 scenarios; INCOMPLETE DATA: {len(ABSENT)} of {wanted} data "
        "files missing",
    ])
    result.stdout.fnmatch_lines([
        f"*= RMB: length on {partial_copy}, INCOMPLETE DATA ({len(ABSENT)} data files missing) =*",
        f"RMB accuracy - INCOMPLETE DATA ({len(ABSENT)} data files missing)*",
    ])
    markdown = (pytester.path / "s.md").read_text()
    assert (f"**Incomplete data: {len(ABSENT)} data file(s) of the selected scenarios missing or empty**: "
            f"`{ABSENT[0]}`, `{ABSENT[1]}`. The numbers are not the full benchmark's.") in markdown


@pytest.mark.parametrize("how", ["option", "ini"])
def test_require_complete_fails_a_run_on_incomplete_data_naming_the_files(pytester, partial_copy, how):
    if how == "ini":
        pytester.makeini("[pytest]\nrmb_require_complete = true\n")
    flag = ["--rmb-require-complete"] if how == "option" else []
    result = run_rmb(pytester, "--rmb-model", "length", "--rmb-data", "data", *flag, "--rmb-gate", "overall>=0.5",
                     "--rmb-json", "s.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    summary = summary_of(pytester.path / "s.json")
    overall, complete = summary["gates"]
    assert overall["status"] == "PASS"
    detail = f"{len(ABSENT)} data file(s) missing or empty: {', '.join(ABSENT)}"
    assert (complete["metric"], complete["status"], complete["detail"]) == ("complete", "FAIL", detail)
    result.stdout.fnmatch_lines([f"  complete: {detail}", "rmb: 1 gate(s) failed: complete (all data files)"])


def test_require_complete_passes_a_selection_whose_files_are_all_there(pytester, partial_copy):
    # -m code: no scenario of the Code task lost a file.
    assert not any("/Code/" in relative for relative in ABSENT)
    result = run_rmb(pytester, "--rmb-model", "length", "--rmb-data", "data", "-m", "code",
                     "--rmb-require-complete", "--rmb-json", "s.json")
    assert result.ret == pytest.ExitCode.OK
    summary = summary_of(pytester.path / "s.json")
    assert summary["complete"] is True and summary["missing"] == []
    assert [(gate["metric"], gate["status"]) for gate in summary["gates"]] == [("complete", "PASS")]
    # The folder itself is still a partial copy: the header says so before any number.
    assert "INCOMPLETE DATA: 2 of 98 data files missing" in result.stdout.str()
    assert "INCOMPLETE DATA (" not in result.stdout.str()


def test_require_complete_on_the_whole_sample_passes(pytester):
    result = run_rmb(pytester, "--rmb-model", "length", "--rmb-data", "sample", "--rmb-require-complete",
                     "--rmb-json", "s.json")
    assert result.ret == pytest.ExitCode.OK
    summary = summary_of(pytester.path / "s.json")
    assert summary["complete"] is True
    assert [(gate["metric"], gate["status"]) for gate in summary["gates"]] == [("complete", "PASS")]
    assert "INCOMPLETE" not in result.stdout.str()


def test_a_partial_run_on_incomplete_data_is_partial_first(pytester, partial_copy):
    result = run_rmb(pytester, "--rmb-model", "length", "--rmb-data", "data", "-x", "--rmb-require-complete",
                     "--rmb-json", "s.json")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    summary = summary_of(pytester.path / "s.json")
    assert summary["status"] == "partial" and summary["complete"] is False
    # -x stopped at a miss in Classification: Chat's missing file was reached, Harmlessness's was not.
    assert [entry["file"] for entry in summary["missing"]] == [ABSENT[0]]
    assert [gate["status"] for gate in summary["gates"]] == ["NOT EVALUATED"]


STOPPING_MODEL = '''
import pytest_rmb


class Quota(pytest_rmb.PointwiseModel):
    """Scores texts by length until its quota of texts is spent, then stops the run."""

    def __init__(self):
        self.left = 30

    def score(self, batch):
        if len(batch) > self.left:
            raise pytest_rmb.RunStopped(f"quota of 30 texts spent ({len(batch)} more asked)")
        self.left -= len(batch)
        return [float(len(request.response)) for request in batch]


def make():
    return Quota()
'''


def test_a_model_of_yours_that_raises_run_stopped_ends_a_partial_run(pytester):
    pytester.makepyfile(quota=STOPPING_MODEL)
    pytester.syspathinsert()
    result = run_rmb(pytester, "--rmb-model", "python:quota:make", "--rmb-data", "sample",
                     "--rmb-gate", "overall>=0.1", "--rmb-json", "q.json", "--rmb-batch-size", "4")
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    summary = summary_of(pytester.path / "q.json")
    outcomes = closing_outcomes(result.stdout.str())
    # The item that hit the quota failed; nothing after it ran.
    assert outcomes.get("failed") == 1
    assert summary["items"] == {"selected": SAMPLE_ITEMS, "ran": ran_items(outcomes)} and ran_items(outcomes) < SAMPLE_ITEMS
    assert summary["stop_reason"] == "pytest-rmb: quota of 30 texts spent (4 more asked)"
    assert [gate["status"] for gate in summary["gates"]] == ["NOT EVALUATED"]
