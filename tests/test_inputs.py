"""What users give the plugin and get wrong: node ids, data folders, data files, scenario paths,
where files are written, and --rmb-limit smoke runs. Each runs as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict

import pytest

from pytest_rmb.data import data_file
from pytest_rmb.scenarios import RegistryError, parse_scenarios, registry
from tests.helpers import (
    SAMPLE_DATA,
    all_files,
    bon,
    expected_correct,
    pair,
    run_rmb,
    write_dataset,
)

run = run_rmb


def scenario_ids(task: str) -> set[str]:
    return {f"rmb/{s.id}" for s in registry() if s.id.startswith(f"{task}/")}


def named_ids(text: str) -> set[str]:
    """Every ``rmb/...`` id in a message, with trailing punctuation removed."""
    return {word.strip(",?;()") for word in text.split() if word.startswith("rmb/")}


# --- 3. node ids that name nothing ---------------------------------------------------------------


def test_a_misspelt_scenario_id_is_a_usage_error_naming_the_closest_ids(pytester):
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "rmb/code/nonexistent")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    message = result.stderr.str()
    assert "rmb/code/nonexistent" in message
    suggested = named_ids(message.split("did you mean", 1)[1].split("?", 1)[0])
    assert suggested and suggested <= scenario_ids("code")

    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "rmb/code/data_managment")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*rmb/code/data_managment*did you mean rmb/code/data_management*"])


def test_a_misspelt_test_name_or_sample_id_is_a_usage_error(pytester):
    uids = sorted(r["pair_uid"] for r in all_files(SAMPLE_DATA)["Pairwise_set/Helpfulness/Code/Data Management.json"])
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "rmb/code/data_management::test_pairwse")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_pairwse*did you mean rmb/code/data_management::test_pairwise*"])

    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample",
                 "rmb/code/data_management::test_pairwise[no-such-uid]")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    message = result.stderr.str()
    assert "test_pairwise[no-such-uid]" in message
    assert any(f"rmb/code/data_management::test_pairwise[{uid}]" in message for uid in uids)


def test_valid_ids_still_select_and_deselecting_them_all_is_not_a_usage_error(pytester):
    code_pairs = sum(
        len(records) for path, records in all_files(SAMPLE_DATA).items() if path.startswith("Pairwise_set/Helpfulness/Code/")
    )
    # A trailing slash, as a shell completes directory names, selects the task.
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "rmb/code/", "-m", "pairwise")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("missed", 0) == code_pairs
    # Right ids whose items -m deselects: pytest's usual "nothing selected", not a usage error.
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "rmb/code/data_management", "-m", "harmlessness")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_wrong_node_ids_under_xdist(pytester):
    args = ("-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", "sample", "-n", "2")
    result = pytester.runpytest_subprocess(*args, "rmb/code/data_managment")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*did you mean rmb/code/data_management*"])
    # Sample ids are checked where items are collected, on the workers: nothing runs, no crash.
    result = pytester.runpytest_subprocess(*args, "rmb/code/data_management::test_bon[no-such-uid]")
    assert result.ret in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.NO_TESTS_COLLECTED)
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert "passed" not in result.stdout.str()


# --- 5. a data folder without a single data file --------------------------------------------------


@pytest.mark.parametrize(
    "folders",
    [("Pairwise_set", "BoN_set"), ("Pairwise_set/Helpfulness/Code", "Pairwise_set/Harmlessness", "BoN_set/Helpfulness")],
)
def test_a_data_folder_without_any_data_file_is_a_usage_error(pytester, folders):
    for folder in folders:
        (pytester.path / "data" / folder).mkdir(parents=True)
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "data")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    message = result.stderr.str()
    assert str(pytester.path / "data") in message
    assert "no RMB data file" in message and "Pairwise_set/Helpfulness/" in message and ".json" in message


# --- 6. an empty data file ------------------------------------------------------------------------


def test_an_empty_data_file_is_reported_once_and_everything_else_is_scored(pytester):
    data = write_dataset(pytester.path / "data", {
        "Pairwise_set/Helpfulness/Code/Documentation.json": [],
        "BoN_set/Helpfulness/Code/Documentation.json": [bon("5", "q", "longest one", ["a", "bb"])],
        "Pairwise_set/Harmlessness/S5.json": [pair("1", "q", "long answer", "short"), pair("2", "q", "x", "yy")],
    })
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "data", "-rs", "--rmb-json", "s.json")
    assert result.ret == pytest.ExitCode.OK
    assert "INTERNALERROR" not in result.stdout.str()
    scored = [r for records in all_files(data).values() for r in records]
    correct = sum(expected_correct(r)[0] for r in scored)
    outcomes = result.parseoutcomes()
    assert (outcomes["passed"], outcomes.get("missed", 0)) == (correct, len(scored) - correct)
    line = "empty data: code/documentation pairwise: Pairwise_set/Helpfulness/Code/Documentation.json*"
    result.stdout.fnmatch_lines([f"*empty data file: {data}/Pairwise_set/Helpfulness/Code/Documentation.json*", line])
    assert sum(row.startswith("empty data:") for row in result.outlines) == 1
    summary = json.loads((pytester.path / "s.json").read_text())
    assert {"scenario": "code/documentation", "kind": "pairwise",
            "file": "Pairwise_set/Helpfulness/Code/Documentation.json", "problem": "empty"} in summary["missing"]
    assert summary["sections"]["harmlessness.pairwise"]["total"] == 2


# --- 7. one bad record ----------------------------------------------------------------------------


def test_a_bad_record_is_one_error_item_and_the_rest_of_its_file_is_scored(pytester):
    null_answer = pair("9", "q", "a", "b")
    null_answer["chosen"]["answer"] = None
    no_uid = pair("x", "q", "a", "b")
    del no_uid["pair_uid"]
    records = [pair("8", "q", "a longer one", "b"), null_answer, pair("10", "q", "x", "yyy"), no_uid,
               pair("8", "q", "same uid", "again")]
    data = write_dataset(pytester.path / "data", {
        "Pairwise_set/Helpfulness/Chat/Discussion.json": records,
        "BoN_set/Helpfulness/Chat/Discussion.json": "[{not json",
    })
    path = data / "Pairwise_set/Helpfulness/Chat/Discussion.json"
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "data", "--rmb-json", "s.json", "--rmb-jsonl", "s.jsonl")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        f"*{path}: record 1 (pair_uid '9'): field 'chosen.answer': expected a string, got null",
        f"*{path}: record 3: field 'pair_uid': missing",
        f"*{path}: record 4: field 'pair_uid': duplicate uid '8' (first at record 0)",
    ], consecutive=False)
    failed = sorted(line.split(" - ")[0] for line in result.outlines if line.startswith("FAILED"))
    assert failed == [
        "FAILED rmb/chat/discussion::test_bon[data-error]",
        "FAILED rmb/chat/discussion::test_pairwise[data-error-9]",
        "FAILED rmb/chat/discussion::test_pairwise[data-error-record-3]",
        "FAILED rmb/chat/discussion::test_pairwise[data-error-record-4]",
    ]
    scored = {r["uid"]: r for r in map(json.loads, (pytester.path / "s.jsonl").read_text().splitlines())}
    assert set(scored) == {"8", "10"}
    for record in records[0], records[2]:
        assert scored[record["pair_uid"]]["correct"] == expected_correct(record)[0]
    summary = json.loads((pytester.path / "s.json").read_text())
    errors = {(e["scenario"], e["kind"]): e for e in summary["errors"]}
    assert errors["chat/discussion", "pairwise"]["items"] == 3
    assert errors["chat/discussion", "bon"]["items"] == 1


# --- 9. a directory where a data file belongs -----------------------------------------------------


def test_a_directory_named_like_a_data_file_is_reported_as_what_it_is(pytester):
    data = write_dataset(pytester.path / "data", {"Pairwise_set/Harmlessness/S5.json": [pair("1", "q", "aa", "b")]})
    (data / "Pairwise_set/Helpfulness/Chat/Discussion.json").mkdir(parents=True)
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "data", "-rs")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([
        "*Pairwise_set/Helpfulness/Chat/Discussion.json (expected a file, found a directory*",
        "missing data: chat/discussion pairwise: Pairwise_set/Helpfulness/Chat/Discussion.json "
        "(expected a file, found a directory: Discussion.json/)",
    ])


# --- 10. scenario paths that leave the data folder ------------------------------------------------

SCENARIO = "[[scenario]]\nid='a/b'\ngoal='helpfulness'\ntask='t'\nname='n'\ndescription='d'\n"


@pytest.mark.parametrize(
    ("pairwise", "bon_path", "field"),
    [("../../secret.json", "BoN_set/x.json", "pairwise"), ("Pairwise_set/x.json", "/etc/passwd", "bon"),
     ("Pairwise_set/../../x.json", "BoN_set/x.json", "pairwise")],
)
def test_a_scenario_path_outside_the_data_folder_is_rejected(pairwise, bon_path, field):
    with pytest.raises(RegistryError) as info:
        parse_scenarios(SCENARIO + f"pairwise={pairwise!r}\nbon={bon_path!r}\n", "x.toml")
    message = str(info.value)
    assert message.startswith("x.toml: scenario 0 (a/b): ")
    assert f"field '{field}'" in message


def test_data_file_never_resolves_outside_the_data_folder(tmp_path):
    (tmp_path / "outside.json").write_text("[]", encoding="utf-8")
    (tmp_path / "data").mkdir()
    for relative in ("../outside.json", str(tmp_path / "outside.json")):
        with pytest.raises(ValueError, match="data folder"):
            data_file(tmp_path / "data", relative)


# --- 16. nothing is written into the data folder --------------------------------------------------


def listing(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def pytest_subprocess(cwd, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--rmb-model", "length", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def test_nothing_is_written_into_the_data_folder(tmp_path):
    data = tmp_path / "RMB_dataset"
    shutil.copytree(SAMPLE_DATA, data)
    before = listing(data)
    started_inside = pytest_subprocess(data, "--rmb-data", ".")
    assert started_inside.returncode == 0, started_inside.stdout + started_inside.stderr
    assert f"rootdir: {data}" in started_inside.stdout
    assert listing(data) == before

    # Started below it, pytest picks the data folder (the common ancestor of the paths) as rootdir.
    below = pytest_subprocess(data / "Pairwise_set", "--rmb-data", "..")
    assert below.returncode == 0, below.stdout + below.stderr
    assert f"rootdir: {data}" in below.stdout
    assert listing(data) == before

    work = tmp_path / "work"
    work.mkdir()
    into_data = pytest_subprocess(work, "--rmb-data", str(data), "--rmb-cache-dir", str(data / "scores"))
    assert into_data.returncode == pytest.ExitCode.USAGE_ERROR
    assert "inside the data folder" in into_data.stderr
    assert listing(data) == before


# --- 17. --rmb-limit ------------------------------------------------------------------------------


def limit_dataset(root):
    """Four scenarios of 12, 5, 1 pairs and 7 lists, the others absent."""
    scenarios = registry()
    files = {
        scenarios[0].pairwise: [pair(str(i), f"q{i}", "a" * (i % 4), "b" * (i % 3)) for i in range(12)],
        scenarios[1].pairwise: [pair(str(100 + i), "q", "aa", "b") for i in range(5)],
        scenarios[2].pairwise: [pair("7", "q", "aa", "b")],
        scenarios[3].bon: [bon(str(200 + i), "q", "best!", ["a", "bb"]) for i in range(7)],
    }
    write_dataset(root, files)
    return {(s.id, kind): len(files.get(s.file(kind), [])) for s in scenarios[:4] for kind in ("pairwise", "bon")}


def selected(pytester, name, *args):
    result = run(pytester, "--rmb-data", "data", "--rmb-limit", "3", "--rmb-jsonl", f"{name}.jsonl",
                 "--rmb-json", f"{name}.json", *args)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    chosen = defaultdict(list)
    for line in (pytester.path / f"{name}.jsonl").read_text().splitlines():
        record = json.loads(line)
        chosen[record["scenario"], record["kind"]].append(record["uid"])
    return result, {key: sorted(uids, key=int) for key, uids in chosen.items()}


def test_limit_selects_the_same_seeded_subset_for_every_model(pytester):
    available = limit_dataset(pytester.path / "data")
    length, by_length = selected(pytester, "length", "--rmb-model", "length", "--rmb-seed", "5")
    _, by_random = selected(pytester, "random", "--rmb-model", "random", "--rmb-seed", "5")
    assert by_random == by_length
    # Every scenario with data is there, with min(N, available) samples.
    assert {key: len(uids) for key, uids in by_length.items()} == {
        key: min(3, n) for key, n in available.items() if n
    }
    _, other_seed = selected(pytester, "seed6", "--rmb-model", "length", "--rmb-seed", "6")
    assert other_seed != by_length
    assert {key: len(uids) for key, uids in other_seed.items()} == {key: len(uids) for key, uids in by_length.items()}
    length.stdout.fnmatch_lines(["*RMB: length on *data, limited to 3 samples per scenario and kind (seed 5)*"])
    summary = json.loads((pytester.path / "length.json").read_text())
    assert (summary["limit"], summary["seed"]) == (3, 5)
    assert summary["samples"] == sum(min(3, n) for n in available.values())


def test_limit_keeps_uid_order_and_is_the_same_under_xdist_and_from_the_ini(pytester):
    limit_dataset(pytester.path / "data")
    _, single = selected(pytester, "one", "--rmb-model", "length")
    collected = run(pytester, "--rmb-model", "length", "--rmb-data", "data", "--rmb-limit", "3", "--collect-only", "-q")
    first = registry()[0].id
    ids = [line.split("[", 1)[1].rstrip("]") for line in collected.outlines
           if line.startswith(f"rmb/{first}::test_pairwise[")]
    assert ids == single[first, "pairwise"]  # uid order, as in a full run

    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", "data", "--rmb-limit", "3",
        "-n", "2", "--rmb-jsonl", "two.jsonl",
    )
    assert result.ret == pytest.ExitCode.OK
    multi = defaultdict(list)
    for line in (pytester.path / "two.jsonl").read_text().splitlines():
        record = json.loads(line)
        multi[record["scenario"], record["kind"]].append(record["uid"])
    assert {key: sorted(uids, key=int) for key, uids in multi.items()} == single

    pytester.makeini("[pytest]\nrmb_limit = 3\n")
    from_ini = run(pytester, "--rmb-model", "length", "--rmb-data", "data", "--rmb-jsonl", "ini.jsonl")
    assert from_ini.ret == pytest.ExitCode.OK
    assert len((pytester.path / "ini.jsonl").read_text().splitlines()) == sum(len(u) for u in single.values())
