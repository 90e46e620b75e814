"""The per-item path: what an RMB item does between its setup and its report, as users run it.

An item is handed its sample at collection, so its setup resolves no fixture for it; everything a
user can hook into there (autouse fixtures, fixtures that ask for the sample, --setup-show) still
sees the sample. Expected values come from the raw records (tests/helpers.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import bon, expected_correct, pair, run_rmb, write_dataset

PAIRS = [pair("1", "q", "long answer", "short"), pair("2", "q", "x", "longer")]
BONS = [bon("5", "q", "longest one", ["a", "bb"]), bon("6", "q", "a", ["bbb", "cc"])]
SCENARIO = "rmb/code/documentation"


def documentation_data(root):
    return write_dataset(root, {
        "Pairwise_set/Helpfulness/Code/Documentation.json": PAIRS,
        "BoN_set/Helpfulness/Code/Documentation.json": BONS,
    })


def expected_items():
    """Node id -> whether the length baseline gets the sample right, from the raw records."""
    items = {f"{SCENARIO}::test_pairwise[{r['pair_uid']}]": expected_correct(r)[0] for r in PAIRS}
    items.update({f"{SCENARIO}::test_bon[{r['bon_uid']}]": expected_correct(r)[0] for r in BONS})
    return items


FIXTURE_SETUPS = """
import json
from pathlib import Path
from pathlib import Path

import pytest

@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    with Path("setups.jsonl").open("a") as out:
        out.write(json.dumps([request.node.nodeid, fixturedef.argname]) + "\\n")
    return (yield)
"""


def test_items_take_their_sample_without_a_fixture_setup(pytester):
    documentation_data(pytester.path / "data")
    # A plugin, not a conftest.py: pytest applies a conftest's hooks by the item's directory, and
    # RMB items live at a virtual path.
    pytester.makepyfile(setup_log=FIXTURE_SETUPS)
    pytester.syspathinsert()
    result = run_rmb(pytester, "-p", "setup_log", "--rmb-model", "length", "--rmb-data", "data", SCENARIO,
                     "--rmb-jsonl", "r.jsonl")
    expected = expected_items()
    misses = sum(not correct for correct in expected.values())
    outcomes = result.parseoutcomes()
    assert (outcomes["passed"], outcomes["missed"]) == (len(expected) - misses, misses)
    setups = [tuple(json.loads(line)) for line in (pytester.path / "setups.jsonl").read_text().splitlines()]
    # The session fixtures are set up once; no item sets up its sample.
    assert sorted(name for _, name in setups) == ["pytestconfig", "rmb_engine", "rmb_model"]
    records = [json.loads(line) for line in (pytester.path / "r.jsonl").read_text().splitlines()]
    assert {f"{SCENARIO}::test_{r['kind']}[{r['uid']}]": r["correct"] for r in records} == expected


def test_user_fixtures_still_see_each_items_sample(pytester):
    documentation_data(pytester.path / "data")
    pytester.makeconftest("""
import json
from pathlib import Path
from pathlib import Path

import pytest

@pytest.fixture(autouse=True)
def record_sample(request):
    sample = request.getfixturevalue("rmb_sample")
    with Path("seen.jsonl").open("a") as out:
        out.write(json.dumps([request.node.nodeid, sample.uid]) + "\\n")
""")
    result = run_rmb(pytester, "--rmb-model", "length", "--rmb-data", "data", SCENARIO)
    assert result.ret == 0
    seen = dict(json.loads(line) for line in (pytester.path / "seen.jsonl").read_text().splitlines())
    assert seen == {nodeid: nodeid.rsplit("[", 1)[1].rstrip("]") for nodeid in expected_items()}


@pytest.mark.parametrize("option", ["--setup-show", "--setup-plan"])
def test_setup_show_still_lists_each_sample(pytester, option):
    documentation_data(pytester.path / "data")
    result = run_rmb(pytester, "--rmb-model", "length", "--rmb-data", "data", SCENARIO, option)
    # Each item sets up its own sample, shown by its value, right before the item's line.
    lines = result.stdout.lines
    for nodeid in expected_items():
        shown = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{nodeid} (fixtures used: "))
        assert "rmb_sample" in lines[shown]
        assert lines[shown - 1].strip().startswith("SETUP    F rmb_sample[")
    assert sum(line.strip().startswith("SETUP    F rmb_sample[") for line in lines) == len(expected_items())


LOCATIONS = """
import json
from pathlib import Path
from pathlib import Path

def pytest_runtest_logstart(nodeid, location):
    with Path("locations.jsonl").open("a") as out:
        out.write(json.dumps([nodeid, location]) + "\\n")
"""


def test_each_item_reports_its_test_functions_file_and_line(pytester):
    """The location pytest reports (JUnit XML, -v, xdist) names the test function's own line."""
    documentation_data(pytester.path / "data")
    pytester.makepyfile(location_log=LOCATIONS)
    pytester.syspathinsert()
    result = run_rmb(pytester, "-p", "location_log", "--rmb-model", "length", "--rmb-data", "data", SCENARIO)
    assert result.ret == 0
    source = (Path(__file__).resolve().parents[1] / "pytest_rmb" / "benchmark.py").read_text().splitlines()
    # pytest's lines are 0-based and name the decorator above a decorated function.
    line_of = {name: source.index(f"def {name}(rmb_sample, request):") - 1 for name in ("test_pairwise", "test_bon")}
    locations = {nodeid: location for nodeid, location in
                 (json.loads(line) for line in (pytester.path / "locations.jsonl").read_text().splitlines())}
    assert set(locations) == set(expected_items())
    for nodeid, (path, line, name) in locations.items():
        test = nodeid.split("::")[1]
        assert Path(path).name == "benchmark.py"
        assert (line, name) == (line_of[test.split("[")[0]], test)


GC_PROBE = """
import gc
import json
from pathlib import Path


def test_probe():
    Path("gc.json").write_text(json.dumps(gc.get_threshold()))
"""


def test_an_rmb_run_raises_the_young_gc_threshold_and_restores_it(pytester):
    import gc

    from pytest_rmb.plugin import RUN_GC_THRESHOLD

    pytester.makepyfile(test_probe=GC_PROBE)
    before = gc.get_threshold()
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "length", "--rmb-data", "sample",
                                "test_probe.py", "rmb/chat/casual_conversation")
    assert result.ret in (0, 1), result.stdout.str()
    assert json.loads((pytester.path / "gc.json").read_text()) == [RUN_GC_THRESHOLD, *before[1:]]
    assert gc.get_threshold() == before
    # A run without --rmb-model leaves the collector alone.
    result = pytester.runpytest("-p", "no:cacheprovider", "test_probe.py")
    assert result.ret == 0
    assert json.loads((pytester.path / "gc.json").read_text()) == list(before)
