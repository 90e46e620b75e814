"""The run record (``--rmb-json``) as users keep it: typed, versioned, validated, read back years later.

Every summary any test of the suite writes is also validated against the shipped schema at the end
of the session (tests/conftest.py); here are the versions, the upgrade, the refusals and the hook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

import pytest_rmb
from pytest_rmb.summary import SCHEMA_VERSION, json_schema, read_summary, shipped_schema
from tests.helpers import run_rmb
from tests.test_user_sets import BON_ROWS, PAIR_ROWS, TOML, write_rows

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PACKAGE_ROOT = Path(pytest_rmb.__file__).resolve().parents[1]
VALIDATOR = jsonschema.Draft202012Validator


run = run_rmb


def registry_tasks() -> dict[str, tuple[str, str]]:
    """scenario id -> (task name, goal), read from the scenario TOML files without pytest_rmb."""
    found = {}
    for path in sorted((PACKAGE_ROOT / "scenarios").glob("*.toml")):
        for table in tomllib.loads(path.read_text(encoding="utf-8")).get("scenario", []):
            found[table["id"]] = (table["task"], table["goal"])
    return found


def test_the_shipped_schema_is_the_one_the_types_declare():
    assert shipped_schema() == json_schema()
    VALIDATOR.check_schema(shipped_schema())
    assert shipped_schema()["properties"]["schema_version"]["const"] == SCHEMA_VERSION == 3


def test_a_run_writes_a_valid_versioned_record_whose_rows_need_no_registry(pytester):
    assert run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "--rmb-json", "s.json").ret == 0
    summary = json.loads((pytester.path / "s.json").read_text())
    VALIDATOR(shipped_schema()).validate(summary)
    assert summary["schema_version"] == 3 and summary["status"] == "ok"
    assert summary["pytest_rmb"] == pytest_rmb.__version__
    # The bundled sample has every one of RMB's 98 files, one item each at least: 147 items, all ran.
    assert summary["complete"] is True and summary["missing"] == []
    assert summary["items"] == {"selected": 147, "ran": 147} and summary["stop_reason"] is None
    tasks = registry_tasks()
    assert len(summary["scenarios"]) == 49
    for scenario_id, row in summary["scenarios"].items():
        assert (row["task_name"], row["goal"]) == tasks[scenario_id]
        assert row["source"] == "rmb"


def test_a_failed_load_writes_a_record_of_the_same_header(pytester):
    failed = run(pytester, "--rmb-model", "./nope", "--rmb-data", "sample", "--rmb-json", "e.json")
    assert failed.ret == pytest.ExitCode.USAGE_ERROR
    summary = json.loads((pytester.path / "e.json").read_text())
    VALIDATOR(shipped_schema()).validate(summary)
    assert summary["schema_version"] == 3 and summary["status"] == "error" and "no such directory" in summary["reason"]
    # The schema itself refuses an "ok" record without results, and an error record without its reason.
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR(shipped_schema()).validate({**summary, "status": "ok"})
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR(shipped_schema()).validate({k: v for k, v in summary.items() if k != "reason"})


def as_version_1(summary: dict) -> dict:
    """A summary as pytest-rmb 0.2 wrote it: no schema_version, scenario rows without task_name/source."""
    old = {k: v for k, v in summary.items() if k != "schema_version"}
    old["pytest_rmb"] = "0.2.0"
    old["scenarios"] = {sid: {k: v for k, v in row.items() if k not in ("task_name", "source")}
                        for sid, row in summary["scenarios"].items()}
    model_info = summary["provenance"]["model_info"]
    old["provenance"] = {**summary["provenance"],
                         "model_info": {**model_info, "kind": model_info["kind"].removesuffix("-model")}}
    return old


def test_a_version_1_summary_is_still_a_baseline_and_compares(pytester):
    assert run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "--rmb-json", "new.json").ret == 0
    new = json.loads((pytester.path / "new.json").read_text())
    old = as_version_1(new)
    assert old["provenance"]["model_info"]["kind"] == "pointwise"
    (pytester.path / "old.json").write_text(json.dumps(old))
    upgraded = read_summary(pytester.path / "old.json", need_outcomes=True)
    assert upgraded["provenance"]["model_info"]["kind"] == "pointwise-model"
    assert upgraded["scenarios"]["chat/discussion"]["task_name"] == "Chat"
    assert upgraded["scenarios"]["chat/discussion"]["source"] is None

    gated = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "--rmb-baseline", "old.json",
                "--rmb-json", "again.json")
    assert gated.ret == 0
    # Upgraded, the old record's provenance differs from this run's in nothing but the version.
    assert "model_info" not in gated.stdout.str()
    again = json.loads((pytester.path / "again.json").read_text())
    # Same model, same samples: nothing lost, nothing gained on the overall row.
    overall = again["baseline"]["sections"]["overall"]
    assert (overall["lost"], overall["gained"], overall["shared"]) == (0, 0, len(new["outcomes"]))

    done = compare(pytester.path, "old.json", "new.json", "--scenarios")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.strip().startswith("scenario:chat/discussion.bon"))
    expected = sum(v for k, v in new["outcomes"].items() if k.startswith("chat/discussion|bon|"))
    expected /= sum(1 for k in new["outcomes"] if k.startswith("chat/discussion|bon|"))
    assert f"{expected:.4f}" in row


def as_version_2(summary: dict) -> dict:
    """A summary as pytest-rmb 0.3 wrote it: no completeness, item counts or stop reason."""
    old = {k: v for k, v in summary.items() if k not in ("complete", "items", "stop_reason")}
    return {**old, "schema_version": 2}


@pytest.mark.parametrize("missing", [[], [{"scenario": "chat/discussion", "kind": "bon",
                                           "file": "BoN_set/Helpfulness/Chat/Discussion.json"}]])
def test_a_version_2_summary_is_upgraded_with_its_completeness_and_no_invented_counts(pytester, missing):
    assert run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "--rmb-json", "new.json").ret == 0
    old = as_version_2({**json.loads((pytester.path / "new.json").read_text()), "missing": missing})
    (pytester.path / "old.json").write_text(json.dumps(old))
    upgraded = read_summary(pytester.path / "old.json", need_outcomes=True)
    assert upgraded["schema_version"] == 3
    # Version 2 listed its missing files: completeness is what that list says. Items were not counted.
    assert upgraded["complete"] is (not missing)
    assert upgraded["items"] is None and upgraded["stop_reason"] is None
    VALIDATOR(shipped_schema()).validate(upgraded)


def test_a_version_1_summary_without_results_names_what_it_lacks(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"model": "m", "sections": {}, "outcomes": {}, "pytest_rmb": "0.1.0"}))
    done = compare(tmp_path, "old.json", "old.json")
    assert done.returncode != 0
    assert "old.json: a summary of schema 1 (pytest-rmb 0.1.0) without overall, tasks, scenarios" in done.stderr


def test_a_newer_schema_is_refused_with_the_version_that_wrote_it(pytester):
    assert run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "--rmb-json", "s.json").ret == 0
    summary = json.loads((pytester.path / "s.json").read_text())
    (pytester.path / "future.json").write_text(json.dumps({**summary, "schema_version": 4, "pytest_rmb": "9.1.0"}))
    said = f"written by pytest-rmb 9.1.0 with summary schema 4; this pytest-rmb ({pytest_rmb.__version__}) reads"
    gated = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "--rmb-baseline", "future.json")
    assert gated.ret == pytest.ExitCode.USAGE_ERROR
    gated.stderr.fnmatch_lines([f"*future.json: {said} schemas 1 to 3: upgrade pytest-rmb to read it"])
    done = compare(pytester.path, "s.json", "future.json")
    assert done.returncode != 0 and said in done.stderr


def test_the_update_hook_adds_fields_that_are_written_and_shown_nowhere_else(pytester):
    pytester.makeconftest("""
        def pytest_rmb_update_summary(config, summary):
            summary["run_id"] = "nightly-42"
            summary["git_sha"] = "0" * 40
    """)
    assert run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "--rmb-json", "s.json").ret == 0
    summary = json.loads((pytester.path / "s.json").read_text())
    assert summary["run_id"] == "nightly-42" and summary["git_sha"] == "0" * 40
    VALIDATOR(shipped_schema()).validate(summary)


def compare(cwd, *args):
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(PACKAGE_ROOT)}
    return subprocess.run([sys.executable, "-m", "pytest_rmb", "compare", *args], check=False, cwd=cwd,
                          capture_output=True, text=True, env=env)


def test_two_runs_on_a_users_own_set_compare_row_by_row(pytester):
    write_rows(pytester.path / "data/support.jsonl", PAIR_ROWS)
    write_rows(pytester.path / "data/support_bon.jsonl", BON_ROWS)
    (pytester.path / "sets.toml").write_text(TOML, encoding="utf-8")
    for model, name in (("length", "a.json"), ("random", "b.json")):
        assert run(pytester, "--rmb-model", model, "--rmb-scenarios", "sets.toml", "--rmb-json", name).ret == 0
    summaries = [json.loads((pytester.path / name).read_text()) for name in ("a.json", "b.json")]
    assert summaries[0]["scenarios"]["custom/support"]["source"].endswith("sets.toml")
    done = compare(pytester.path, "a.json", "b.json", "--scenarios")
    assert done.returncode == 0, done.stderr
    for kind in ("pairwise", "bon"):
        values = []
        for summary in summaries:
            outcomes = [v for k, v in summary["outcomes"].items() if k.startswith(f"custom/support|{kind}|")]
            values.append(sum(outcomes) / len(outcomes))
        row = next(line for line in done.stdout.splitlines()
                   if line.strip().startswith(f"scenario:custom/support.{kind}"))
        cells = [cell.rstrip("*") for cell in row.split()[1:4]]
        assert cells == [f"{values[0]:.4f}", f"{values[1]:.4f}", f"{values[1] - values[0]:+.4f}"], row
