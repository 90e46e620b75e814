"""The plugin as users run it: pytester sessions over the bundled sample and hand-made datasets."""

from __future__ import annotations

import fnmatch
import json
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from tests.helpers import SAMPLE_DATA, SECTION_OF, all_files, bon, expected_correct, pair, run_rmb, write_dataset


def length_expectation(root):
    """Per-section (correct, total) of the length baseline, from the raw files."""
    correct, total = Counter(), Counter()
    for relative, records in all_files(root).items():
        kind_dir, goal_dir = relative.split("/")[:2]
        section = SECTION_OF[kind_dir, goal_dir]
        for record in records:
            total[section] += 1
            correct[section] += expected_correct(record)[0]
    return correct, total


run = run_rmb


@pytest.fixture
def sample_expectation():
    return length_expectation(SAMPLE_DATA)


def test_sample_run_prints_rmb_tables_and_exits_0_despite_misses(pytester, sample_expectation):
    correct, total = sample_expectation
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == sum(correct.values())
    assert outcomes.get("missed", 0) == sum(total.values()) - sum(correct.values())
    assert result.ret == 0
    accuracies = {k: correct[k] / total[k] for k in total}
    result.stdout.fnmatch_lines(
        [
            "*RMB: length on sample*",
            f"*Helpfulness Pairwise*{accuracies['helpfulness.pairwise']:.4f}*"
            f"{correct['helpfulness.pairwise']}/{total['helpfulness.pairwise']}*",
            f"*Harmlessness BoN*{accuracies['harmlessness.bon']:.4f}*"
            f"{correct['harmlessness.bon']}/{total['harmlessness.bon']}*",
            f"*Overall*{sum(accuracies.values()) / 4:.4f}*",
            "*Per task*",
            "*Closed QA*",
            "*RMB misses*",
        ]
    )
    # Misses never come as tracebacks or as pytest's failure listings.
    assert "FAILURES" not in result.stdout.str()
    assert "short test summary" not in result.stdout.str()
    miss_lines = [line for line in result.outlines if line.startswith("rmb/") and "margin" in line]
    assert 0 < len(miss_lines) <= 10


def test_json_and_jsonl_outputs(pytester, sample_expectation):
    correct, total = sample_expectation
    result = run(
        pytester, "--rmb-model", "length", "--rmb-data", "sample",
        "--rmb-json", "out/summary.json", "--rmb-jsonl", "out/samples.jsonl",
    )
    assert result.ret == 0
    summary = json.loads((pytester.path / "out/summary.json").read_text())
    assert summary["model"] == "length" and summary["dataset"] == "sample"
    for section in total:
        entry = summary["sections"][section]
        assert (entry["correct"], entry["total"]) == (correct[section], total[section])
        assert entry["accuracy"] == pytest.approx(correct[section] / total[section])
        low, high = entry["ci95"]
        assert low <= entry["accuracy"] <= high
    assert summary["overall"] == pytest.approx(sum(correct[k] / total[k] for k in total) / 4)
    assert summary["tasks"]["closed_qa"]["pairwise"]["total"] == 4
    assert summary["scenarios"]["code/data_management"]["bon"]["total"] == 1
    assert summary["missing"] == [] and summary["errors"] == []
    assert summary["engine"]["response_slots"] == sum(
        len(r["loser_list"]) + 1 if "bon_uid" in r else 2
        for records in all_files(SAMPLE_DATA).values() for r in records
    )
    assert 0 < summary["engine"]["texts_scored"] < summary["engine"]["response_slots"]

    lines = [json.loads(x) for x in (pytester.path / "out/samples.jsonl").read_text().splitlines()]
    assert len(lines) == sum(total.values())
    raw = {
        (("pairwise" if "pair_uid" in r else "bon"), r.get("pair_uid") or r.get("bon_uid")): r
        for records in all_files(SAMPLE_DATA).values() for r in records
    }
    for line in lines:
        assert set(line) >= {"scenario", "kind", "uid", "scores", "correct"}
        expected, scores = expected_correct(raw[line["kind"], line["uid"]])
        assert line["scores"] == scores and line["correct"] == expected


def test_no_data_configured_stops_with_how_to(pytester, monkeypatch):
    monkeypatch.delenv("RMB_DATA", raising=False)
    result = run(pytester, "--rmb-model", "length")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no RMB data configured*--rmb-data PATH*RMB_DATA*--rmb-data sample*"])


def test_data_from_env_and_from_ini_relative_to_the_ini_file(pytester, monkeypatch):
    write_dataset(pytester.path / "data", {"Pairwise_set/Helpfulness/Code/Documentation.json": [pair("1", "q", "long", "s")]})
    monkeypatch.setenv("RMB_DATA", str(pytester.path / "data"))
    result = run(pytester, "--rmb-model", "length", "-m", "code and pairwise")
    assert result.parseoutcomes()["passed"] == 1
    monkeypatch.delenv("RMB_DATA")
    pytester.makeini("[pytest]\nrmb_data = data\n")
    sub = pytester.mkdir("sub")
    monkeypatch.chdir(sub)
    result = run(pytester, "--rmb-model", "length", "-m", "code and pairwise")
    assert result.parseoutcomes()["passed"] == 1


def test_data_path_that_is_not_rmb_layout_is_rejected(pytester):
    pytester.mkdir("empty")
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "empty")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--rmb-data empty*neither Pairwise_set/ nor BoN_set/*"])
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "nowhere")
    result.stderr.fnmatch_lines(["*--rmb-data nowhere: no such directory*"])


def test_without_rmb_model_the_plugin_is_idle(pytester):
    pytester.makepyfile("def test_mine(): pass")
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert "RMB" not in result.stdout.str()


def test_p_no_rmb_turns_the_plugin_off(pytester):
    result = run(pytester, "-p", "no:rmb", "--rmb-model", "length")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --rmb-model*"])


def test_with_rmb_model_only_the_benchmark_runs_unless_paths_are_named(pytester):
    pytester.makepyfile(test_mine="def test_mine(): pass")
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "-m", "code and bon")
    assert "test_mine" not in result.stdout.str()
    assert sum(result.parseoutcomes().get(k, 0) for k in ("passed", "missed")) == 4
    result = run(
        pytester, "--rmb-model", "length", "--rmb-data", "sample", "-k", "test_mine or documentation", "test_mine.py", "-v"
    )
    result.stdout.fnmatch_lines(["*test_mine.py::test_mine PASSED*"])
    assert sum(result.parseoutcomes().get(k, 0) for k in ("passed", "missed")) == 1 + 3


def test_markers_and_k_select_as_pytest_users_expect(pytester):
    result = run(
        pytester, "--rmb-model", "length", "--rmb-data", "sample",
        "-m", "helpfulness and bon", "-k", "Data Management", "--collect-only", "-q",
    )
    result.stdout.fnmatch_lines(["rmb/code/data_management::test_bon[[]10]", "*1/147 tests collected (146 deselected)*"])
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "-m", "harmlessness", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*36/147 tests collected (111 deselected)*"])
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "-m", "closed_qa and pairwise", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*4/147 tests collected*"])


def test_node_ids_can_be_passed_as_arguments(pytester):
    result = run(
        pytester, "--rmb-model", "length", "--rmb-data", "sample", "--collect-only", "-q",
        "rmb/chat", "rmb/code/documentation::test_pairwise",
    )
    lines = [line for line in result.outlines if line.startswith("rmb/")]
    assert len(lines) == 9 + 2
    assert all(line.startswith(("rmb/chat/", "rmb/code/documentation::test_pairwise[")) for line in lines)


def test_x_stops_at_the_first_miss(pytester):
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "-x")
    outcomes = result.parseoutcomes()
    assert outcomes["missed"] == 1
    assert outcomes["passed"] < 146


def test_verbose_shows_missed_items_and_the_scenario_table(pytester):
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "-v", "-m", "closed_qa")
    result.stdout.fnmatch_lines(
        ["rmb/closed_qa/contextbased::test_bon[[]8] MISSED*", "*Per scenario*", "*closed_qa/contextbased*"]
    )
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "-m", "closed_qa", "--rmb-show-scenarios")
    result.stdout.fnmatch_lines(["*Per scenario*"])


def test_junitxml_has_one_testcase_per_sample_and_misses_as_failures(pytester):
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "-m", "rewrite", "--junitxml", "j.xml")
    assert result.ret == 0
    suite = ET.parse(pytester.path / "j.xml").getroot().find("testsuite")
    cases = suite.findall("testcase")
    failures = [c for c in cases if c.find("failure") is not None]
    assert len(cases) == 12
    assert len(failures) == result.parseoutcomes()["missed"] > 0
    assert "margin" in failures[0].find("failure").get("message")
    properties = {p.get("name"): p.get("value") for p in failures[0].iter("property")}
    assert properties["rmb.correct"] == "false"
    scores = json.loads(properties["rmb.scores"])
    assert float(properties["rmb.margin"]) == pytest.approx(scores[0] - max(scores[1:]))


def small_dataset(root):
    return write_dataset(
        root,
        {
            "Pairwise_set/Helpfulness/Code/Documentation.json": [
                pair("1", "q", "long answer", "short"), pair("2", "q", "x", "longer"),
            ],
            "BoN_set/Helpfulness/Code/Documentation.json": [bon("5", "q", "longest one", ["a", "bb"])],
            "Pairwise_set/Harmlessness/S5.json": [pair("13586", "q", "refusal", "")],
        },
    )


def test_missing_files_are_skipped_with_the_file_named_and_reported(pytester):
    small_dataset(pytester.path / "data")
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "data", "-rs", "--rmb-json", "s.json")
    assert result.ret == 0
    outcomes = result.parseoutcomes()
    assert (outcomes["passed"], outcomes["missed"], outcomes["skipped"]) == (3, 1, 98 - 3)
    result.stdout.fnmatch_lines(
        ["*missing data file: Pairwise_set/Harmlessness/S11.json (not found under *data)*",
         "missing data: brainstorming/idea_development bon: BoN_set/Helpfulness/Brainstorming/Idea Development.json",
         "missing data: ... and 85 more (listed in --rmb-json under 'missing')"]
    )
    summary = json.loads((pytester.path / "s.json").read_text())
    assert len(summary["missing"]) == 95
    assert {"scenario": "harmlessness/s5_specialized_advice", "kind": "bon", "file": "BoN_set/Harmlessness/S5.json"} in summary["missing"]
    assert summary["sections"]["harmlessness.pairwise"]["correct"] == 1


def test_bad_data_is_reported_with_file_record_field_and_the_rest_still_runs(pytester):
    data = small_dataset(pytester.path / "data")
    bad = pair("9", "q", "a", "b")
    bad["chosen"]["answer"] = None
    write_dataset(data, {
        "Pairwise_set/Helpfulness/Chat/Discussion.json": [pair("8", "q", "a", "b"), bad],
        "BoN_set/Helpfulness/Chat/Discussion.json": "[{not json",
    })
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "data", "--rmb-json", "s.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*/data/Pairwise_set/Helpfulness/Chat/Discussion.json: record 1 (pair_uid '9'): "
        "field 'chosen.answer': expected a string, got null",
        "*/data/BoN_set/Helpfulness/Chat/Discussion.json: invalid JSON at line 1 column 3*",
        "FAILED rmb/chat/discussion::test_pairwise[[]data-error-9] - *",
        "FAILED rmb/chat/discussion::test_bon[[]data-error] - *",
    ])
    assert "Traceback" not in result.stdout.str()
    summary = json.loads((pytester.path / "s.json").read_text())
    assert [(e["scenario"], e["kind"]) for e in summary["errors"]] == [("chat/discussion", "bon"), ("chat/discussion", "pairwise")]
    assert "record 1 (pair_uid '9'): field 'chosen.answer'" in summary["errors"][1]["message"]
    # Nothing else was lost, not even the good record beside the bad one.
    assert summary["sections"]["helpfulness.pairwise"]["total"] == 3
    assert summary["sections"]["harmlessness.pairwise"]["total"] == 1


PREFER_SHORT = """
class PreferShort:
    def score(self, batch):
        return [-float(len(request.response)) for request in batch]
"""


def test_rmb_model_fixture_can_be_overridden_in_conftest(pytester):
    small_dataset(pytester.path / "data")
    pytester.makeconftest(PREFER_SHORT + """
import pytest

@pytest.fixture(scope="session")
def rmb_model():
    return PreferShort()
""")
    result = run(pytester, "--rmb-model", "prefer-short", "--rmb-data", "data", "--rmb-json", "s.json")
    summary = json.loads((pytester.path / "s.json").read_text())
    assert summary["model"] == "prefer-short"
    # Short wins: pair 1 misses, pair 2 passes, the BoN list misses, S5 (empty reject) misses.
    assert summary["sections"]["helpfulness.pairwise"]["correct"] == 1
    assert summary["sections"]["helpfulness.bon"]["correct"] == 0
    assert result.parseoutcomes()["missed"] == 3


def test_python_factory_model(pytester, monkeypatch):
    small_dataset(pytester.path / "data")
    pytester.makepyfile(my_scorers=PREFER_SHORT + """
def make(settings):
    assert settings.model == "python:my_scorers:make"
    return PreferShort()
""")
    monkeypatch.syspath_prepend(pytester.path)
    result = run(pytester, "--rmb-model", "python:my_scorers:make", "--rmb-data", "data")
    assert result.parseoutcomes()["missed"] == 3


BUDGETED = """
from pathlib import Path

class Budgeted:
    batch_tokens = 300  # each text costs 100 tokens: three per batch unless --rmb-batch-tokens says

    def cost(self, batch):
        return [100] * len(batch)

    def score(self, batch):
        with Path("batch_sizes.txt").open("a") as sizes:
            sizes.write(f"{len(batch)}\\n")
        return [float(len(request.response)) for request in batch]

def make():
    return Budgeted()
"""


@pytest.mark.parametrize(("options", "largest"), [((), 3), (("--rmb-batch-tokens", "500"), 5)])
def test_a_scorer_names_its_own_token_budget_and_the_option_overrides_it(pytester, monkeypatch, options, largest):
    pytester.makepyfile(budgeted=BUDGETED)
    monkeypatch.syspath_prepend(pytester.path)
    run(pytester, "--rmb-model", "python:budgeted:make", "--rmb-data", "sample", "--rmb-json", "s.json", *options)
    sizes = [int(line) for line in (pytester.path / "batch_sizes.txt").read_text().split()]
    engine = json.loads((pytester.path / "s.json").read_text())["engine"]
    assert max(sizes) == largest
    assert sum(sizes) == engine["texts_scored"] > 100 and len(sizes) == engine["batches"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("python:no_such_module_xyz:make", "*cannot import 'no_such_module_xyz'*"),
        ("python:json:nothing", "*module 'json' has no attribute 'nothing'*"),
        ("python:json:dumps_", "*no attribute*"),
        # Offline (tests set HF_HUB_OFFLINE=1), a hub id absent from the local cache fails at once.
        ("not-a-model", "*--rmb-model not-a-model: not a local directory, and HF_HUB_OFFLINE is set*"),
        ("lenght", "*--rmb-model lenght: not a built-in baseline*(did you mean length?)*"),
        ("owner/model name", "*not a local directory and not a Hugging Face model id*"),
        ("./no/such/checkpoint", "*--rmb-model ./no/such/checkpoint: no such directory*"),
    ],
)
def test_a_model_that_cannot_load_stops_the_run_once(pytester, spec, message):
    small_dataset(pytester.path / "data")
    result = run(pytester, "--rmb-model", spec, "--rmb-data", "data")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stdout.str().count("pytest-rmb:") + result.stderr.str().count("pytest-rmb:") == 1
    assert fnmatch.fnmatch(result.stdout.str() + result.stderr.str(), message)


def test_a_failing_scorer_errors_its_scenario_compactly(pytester):
    small_dataset(pytester.path / "data")
    pytester.makeconftest("""
import pytest

class Broken:
    def score(self, batch):
        raise ValueError("model exploded")

@pytest.fixture(scope="session")
def rmb_model():
    return Broken()
""")
    result = run(pytester, "--rmb-model", "broken", "--rmb-data", "data", "--rmb-json", "s.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*ValueError: model exploded*"])
    result.stdout.fnmatch_lines(["*scenario code/documentation could not be scored: ValueError: model exploded*"])
    # Compact: one line per failed item, no traceback through the engine; the first item also
    # says where in the model's own code it failed.
    assert "engine.py" not in result.stdout.str() and "Traceback" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*could not be scored: ValueError: model exploded",
                                 '  */conftest.py:5 in score: raise ValueError("model exploded")'])
    # The first item of each of the 2 scenarios, in pytest's failure section (the short summary
    # repeats whole messages when pytest sees a CI variable, so it is left out of the count).
    failures = result.stdout.str().split("short test summary info")[0]
    assert failures.count("conftest.py:5 in score") == 2
    result.stdout.fnmatch_lines(["error: code/documentation pairwise (2 items): scenario code/documentation could "
                                 "not be scored: ValueError: model exploded"])
    summary = json.loads((pytester.path / "s.json").read_text())
    assert {e["scenario"] for e in summary["errors"]} == {"code/documentation", "harmlessness/s5_specialized_advice"}


def test_markers_and_options_are_listed(pytester):
    result = run(pytester, "--markers")
    for marker in ("helpfulness", "harmlessness", "pairwise", "bon", "closed_qa", "role_playing", "translation"):
        result.stdout.fnmatch_lines([f"@pytest.mark.{marker}: *"])
    result = run(pytester, "--help")
    result.stdout.fnmatch_lines(["reward-model benchmark (RMB):", "*--rmb-model=NAME*", "*--rmb-data=PATH*",
                                 "*--rmb-json=PATH*", "*--rmb-jsonl=PATH*", "*--rmb-seed=N*",
                                 "*--rmb-batch-size=N*", "*--rmb-bootstrap=N*", "*--rmb-show-scenarios*",
                                 "*--rmb-show-misses=N*", "*rmb_data (string)*"])


@pytest.mark.parametrize("option", ["--rmb-seed=-1", "--rmb-batch-size=0", "--rmb-bootstrap=x"])
def test_bad_option_values_are_usage_errors_at_parse_time(pytester, option):
    result = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*argument --rmb-*: expected*"])


def test_random_baseline_is_reproducible_and_seeded(pytester):
    args = ("--rmb-model", "random", "--rmb-data", "sample")
    run(pytester, *args, "--rmb-jsonl", "a.jsonl")
    run(pytester, *args, "--rmb-jsonl", "b.jsonl")
    run(pytester, *args, "--rmb-jsonl", "c.jsonl", "--rmb-seed", "7")
    a, b, c = ((pytester.path / f"{n}.jsonl").read_text() for n in "abc")
    assert a == b and a != c
    scores = [s for line in a.splitlines() for s in json.loads(line)["scores"]]
    assert all(0 <= s < 1 for s in scores)


def test_xdist_gives_the_same_results_as_one_process(pytester):
    args = ("--rmb-model", "random", "--rmb-data", "sample", "-p", "no:cacheprovider")
    single = pytester.runpytest_subprocess(*args, "--rmb-json", "one.json", "--rmb-jsonl", "one.jsonl")
    multi = pytester.runpytest_subprocess(*args, "-n", "2", "--rmb-json", "two.json", "--rmb-jsonl", "two.jsonl")
    assert single.ret == multi.ret == 0
    multi.stdout.fnmatch_lines(["*rmb: each scenario runs on one xdist worker (--dist loadgroup)*"])
    one, two = (json.loads((pytester.path / f"{n}.json").read_text()) for n in ("one", "two"))
    one["engine"].pop("scoring_seconds"), two["engine"].pop("scoring_seconds")
    # Each process that scored loaded the model once: the one process, or both workers.
    assert (one["engine"].pop("model_loads"), two["engine"].pop("model_loads")) == (1, 2)
    # Each scenario ran on one worker: no text was scored twice, batches are the same.
    assert one["engine"]["texts_scored"] == 245
    assert one == two
    assert (pytester.path / "one.jsonl").read_text() == (pytester.path / "two.jsonl").read_text()
    assert single.parseoutcomes() == {k: v for k, v in multi.parseoutcomes().items()}


@pytest.mark.parametrize("workers", [(), ("-n", "2")])
def test_node_ids_stay_rmb_paths_when_the_rootdir_is_elsewhere(pytester, tmp_path_factory, workers):
    # An ini file beside the data makes its folder the rootdir, which does not contain the
    # directory pytest is started from: node ids must still name the task and the scenario.
    project = tmp_path_factory.mktemp("project")
    (project / "pytest.ini").write_text("[pytest]\n")
    data = small_dataset(project / "data")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", str(data), "-v", "--rmb-json", "s.json",
        *workers,
    )
    result.stdout.fnmatch_lines([f"rootdir: {project}"])
    result.stdout.fnmatch_lines(["rmb/code/documentation::test_pairwise[[]2]: chosen 1 <= rejected 6 (margin -5)"])
    # One scorer pass per unique text, also when the scenarios are spread over two workers.
    assert json.loads((pytester.path / "s.json").read_text())["engine"]["texts_scored"] == 9
    # pytest's own -v lines print the id from the rootdir's place; copied back, it selects the item.
    printed = f"../{project.name}/rmb/code/documentation::test_pairwise[2]"
    assert any(printed in line and "MISSED" in line for line in result.outlines)
    again = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", str(data), printed, *workers
    )
    outcomes = again.parseoutcomes()
    assert outcomes["missed"] == 1 and "passed" not in outcomes and "skipped" not in outcomes


def test_path_options_do_not_break_conftest_lookup(pytester, tmp_path_factory):
    # pytest counts an existing path given as an option value when it picks the rootdir; the
    # conftest beside the user must still reach the RMB items.
    data = small_dataset(tmp_path_factory.mktemp("elsewhere") / "data")
    pytester.makeconftest(PREFER_SHORT + """
import pytest

@pytest.fixture(scope="session")
def rmb_model():
    return PreferShort()
""")
    result = run(pytester, "--rmb-model", "prefer-short", "--rmb-data", str(data), "-v")
    assert result.parseoutcomes()["missed"] == 3
    result.stdout.fnmatch_lines([
        "rmb/code/documentation::test_pairwise[[]1] MISSED*",
        "rmb/code/documentation::test_pairwise[[]1]: chosen -11 <= rejected -5 (margin -6)",
    ])


def test_model_frames_keep_the_users_files_and_drop_only_pytest_rmbs(tmp_path):
    from pytest_rmb.benchmark import _OUR_CODE, model_frames

    # A user's package beside pytest_rmb (its path starts with ours) is the user's code; a chain
    # deeper than six frames keeps where the model called in and the innermost frames.
    sibling = f"{_OUR_CODE}_mymodels/scorer.py"
    source = "def f0():\n    f1()\n" + "".join(f"def f{i}():\n    f{i + 1}()\n" for i in range(1, 8))
    source += "def f8():\n    raise ValueError('deep')\n"
    namespace: dict = {}
    exec(compile(source, sibling, "exec"), namespace)
    # Caught where the engine catches it, so the traceback starts in pytest-rmb's code.
    engine_like = "def call(function):\n    try:\n        function()\n    except ValueError as exc:\n        return exc\n"
    exec(compile(engine_like, str(_OUR_CODE / "engine.py"), "exec"), namespace)
    failure = namespace["call"](namespace["f0"])
    lines = model_frames(failure).splitlines()[1:]
    assert [line.split(" in ")[1].split(":")[0] for line in lines] == ["f0", "f4", "f5", "f6", "f7", "f8"]
    assert all(line.startswith(f"  {sibling}:") for line in lines)


def test_a_run_without_pytest_terminal_plugin_still_writes_its_results(pytester):
    # `-p no:terminal` (quiet CI jobs, IDE runners) drops pytest's terminal options: no crash, and
    # the summary is the same as with them.
    quiet = run(pytester, "-p", "no:terminal", "--rmb-model", "length", "--rmb-data", "sample", "--rmb-json", "q.json")
    assert quiet.ret == 0 and "INTERNALERROR" not in quiet.stdout.str() + quiet.stderr.str()
    loud = run(pytester, "--rmb-model", "length", "--rmb-data", "sample", "--rmb-json", "l.json")
    assert loud.ret == 0
    assert (json.loads((pytester.path / "q.json").read_text())["sections"]
            == json.loads((pytester.path / "l.json").read_text())["sections"])
