"""The seam every kind of model goes through: backends found by entry point or hook, validated
--rmb-model-arg settings, pairwise models through the outcome stage, and the conftest override.

Expected numbers come from the raw data files (tests/helpers.py), never from pytest_rmb.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pytest_rmb.cache import default_cache_dir
from tests.helpers import (
    SAMPLE_DATA,
    SHARED_DATA,
    all_files,
    bon,
    expected_correct,
    length_sections,
    pair,
    write_dataset,
)


def sections_of(summary):
    return {name: (entry["correct"], entry["total"]) for name, entry in summary["sections"].items() if entry["total"]}


ECHO_PACKAGE = '''
from pathlib import Path

from pytest_rmb import PointwiseModel
from pytest_rmb.backends import Backend, ModelArg
from pytest_rmb.parsers import positive_int


class Echo(PointwiseModel):
    """Scores by length; writes what it was given, so the test can see the settings arrive."""

    def __init__(self, settings):
        Path("echo-settings.json").write_text(
            __import__("json").dumps({"target": settings.target, "args": dict(settings.args)}))

    def score(self, batch):
        return [float(len(r.response)) for r in batch]


BACKEND = Backend(
    "echo", Echo,
    args=(ModelArg("k", str, "default-k", "any text"), ModelArg("n", positive_int, 3, "a count")),
    summary="a test backend that scores by length",
)
'''


@pytest.fixture
def echo_site(tmp_path):
    """A package installed the way pip leaves one: a module and a dist-info with entry points."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "echo_backend.py").write_text(ECHO_PACKAGE)
    info = site / "echo_backend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pytest_rmb.backends]\necho = echo_backend:BACKEND\n")
    return site


def run_subprocess(cwd, site, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def test_an_installed_package_adds_a_backend_through_its_entry_point_alone(tmp_path, echo_site):
    work = tmp_path / "work"
    work.mkdir()
    result = run_subprocess(work, echo_site, "--rmb-model", "echo:x", "--rmb-model-arg", "k=v",
                            "--rmb-data", "sample", "--rmb-json", "s.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = json.loads((work / "echo-settings.json").read_text())
    assert seen == {"target": "x", "args": {"k": "v", "n": 3}}
    summary = json.loads((work / "s.json").read_text())
    assert sections_of(summary) == length_sections(SAMPLE_DATA)
    assert summary["provenance"]["model_args"] == {"k": "v", "n": 3}

    listing = subprocess.run([sys.executable, "-m", "pytest_rmb", "backends"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(echo_site)}, timeout=120)
    assert listing.returncode == 0
    assert "echo:  a test backend that scores by length" in listing.stdout
    assert "n=INT (default 3)  a count" in listing.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rmb-model-arg", "colour=red"], "the echo backend has no setting 'colour'; accepted: k, n"),
        (["--rmb-model-arg", "n=0"], "--rmb-model-arg n: expected a positive integer, got 0"),
        (["--rmb-model-arg", "novalue"], "--rmb-model-arg 'novalue': expected KEY=VALUE"),
    ],
)
def test_bad_backend_settings_are_usage_errors_before_anything_loads(tmp_path, echo_site, args, message):
    result = run_subprocess(tmp_path, echo_site, "--rmb-model", "echo:x", *args, "--rmb-data", "sample")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr
    assert not (tmp_path / "echo-settings.json").exists()


def test_an_unknown_scheme_lists_the_installed_ones(pytester):
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "nosuch:model", "--rmb-data", "sample")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown backend scheme 'nosuch'; installed: *hf*openai*python*vllm*"])


def test_a_conftest_adds_a_backend_through_the_hook(pytester):
    pytester.makeconftest('''
from pytest_rmb import PointwiseModel
from pytest_rmb.backends import Backend, ModelArg

class Shortest(PointwiseModel):
    def __init__(self, settings):
        self.sign = float(settings.args["sign"])

    def score(self, batch):
        return [self.sign * len(r.response) for r in batch]

def pytest_rmb_add_backends(config):
    return [Backend("mine", Shortest, args=(ModelArg("sign", float, 1.0),))]
''')
    longest = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "mine:x", "--rmb-data", "sample",
                                 "--rmb-json", "long.json")
    shortest = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "mine:x", "--rmb-model-arg", "sign=-1",
                                  "--rmb-data", "sample", "--rmb-json", "short.json")
    assert longest.ret == shortest.ret == 0
    assert sections_of(json.loads((pytester.path / "long.json").read_text())) == length_sections(SAMPLE_DATA)
    short = sections_of(json.loads((pytester.path / "short.json").read_text()))
    assert short != length_sections(SAMPLE_DATA)


PREFER_LONGER_JUDGE = '''
from pytest_rmb import PairwiseModel, Verdict

class PreferLonger(PairwiseModel):
    """A pairwise stand-in: the longer answer wins; a tie is not a win."""

    def __init__(self):
        self.asked = 0

    def compare(self, batch):
        self.asked += len(batch)
        return [Verdict(len(r.first) > len(r.second), p_first=0.75 if len(r.first) > len(r.second) else 0.25)
                for r in batch]

def make():
    return PreferLonger()
'''


def test_a_pairwise_model_gives_exactly_the_length_baselines_sections_on_the_sample(pytester, monkeypatch):
    pytester.makepyfile(judges=PREFER_LONGER_JUDGE)
    monkeypatch.syspath_prepend(pytester.path)
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "python:judges:make",
                                "--rmb-data", "sample", "--rmb-json", "s.json", "--rmb-jsonl", "s.jsonl")
    assert result.ret == 0
    summary = json.loads((pytester.path / "s.json").read_text())
    assert sections_of(summary) == length_sections(SAMPLE_DATA)
    records = [json.loads(line) for line in (pytester.path / "s.jsonl").read_text().splitlines()]
    raw = {("pairwise", r["pair_uid"]) if "pair_uid" in r else ("bon", r["bon_uid"]): r
           for file_records in all_files(SAMPLE_DATA).values() for r in file_records}
    assert len(records) == len(raw)
    for record in records:
        correct, _ = expected_correct(raw[record["kind"], record["uid"]])
        assert record["correct"] == correct
        assert "scores" not in record
        # One verdict per comparison until the first loss (Best-of-N early stop), none skipped before it.
        verdicts = record["verdicts"]
        decided = [v for v in verdicts if v is not None]
        assert all(v["won"] for v in decided[:-1])
        assert decided[-1]["won"] == correct
        assert len(decided) == len(verdicts) or not correct
        if correct:
            assert record["p_chosen"] == pytest.approx(0.75 ** len(verdicts))
    assert summary["engine"]["comparisons_made"] > 0
    assert summary["engine"]["texts_scored"] == 0
    expected = length_sections(SAMPLE_DATA)
    right, total = sum(c for c, _ in expected.values()), sum(t for _, t in expected.values())
    assert summary["judge"]["overall"]["accuracy"] == right / total
    help_right, help_total = expected["helpfulness.pairwise"]
    result.stdout.fnmatch_lines(["*Judge*", f"*helpfulness.*{help_right / help_total:.4f}*",
                                 f"*all samples*{right / total:.4f}*{right / total:.4f}*"])


def test_best_of_n_stops_judging_a_list_at_its_first_lost_comparison(pytester, monkeypatch):
    write_dataset(pytester.path / "data", {
        # Loses to loser 1 ("bbbbbb"): losers 2 and 3 are never asked about.
        "BoN_set/Helpfulness/Code/Documentation.json": [
            bon("1", "q", "aaaa", ["bbbbbb", "c", "dd"]), bon("2", "q", "aaaa", ["b", "c", "dd"])],
        "Pairwise_set/Helpfulness/Code/Documentation.json": [pair("3", "q", "aaaa", "b")],
    })
    pytester.makepyfile(judges=PREFER_LONGER_JUDGE + '''
class Counting(PreferLonger):
    def compare(self, batch):
        with open("asked.txt", "a") as log:
            log.writelines(f"{r.first}|{r.second}\\n" for r in batch)
        return super().compare(batch)

def counting():
    return Counting()
''')
    monkeypatch.syspath_prepend(pytester.path)
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "python:judges:counting",
                                "--rmb-data", "data", "--rmb-json", "s.json")
    assert result.ret == 0
    asked = sorted((pytester.path / "asked.txt").read_text().split())
    # List 1: one comparison (lost). List 2: three (all won). Pair 3: one. "aaaa|b" is shared: once.
    assert asked == sorted(["aaaa|bbbbbb", "aaaa|b", "aaaa|c", "aaaa|dd"])
    engine = json.loads((pytester.path / "s.json").read_text())["engine"]
    assert (engine["comparisons_made"], engine["comparisons_skipped"], engine["comparison_slots"]) == (4, 2, 7)
    result.stdout.fnmatch_lines(["*test_bon?1?: best lost against loser 1 of 3 (judged worse)*"])


def test_a_failed_comparison_is_an_error_never_a_miss_and_is_not_cached(pytester, monkeypatch):
    small = {"Pairwise_set/Helpfulness/Code/Documentation.json": [pair("1", "q", "long answer", "short"),
                                                                 pair("2", "q", "x", "longer")]}
    write_dataset(pytester.path / "data", small)
    pytester.makepyfile(judges='''
from pytest_rmb import PairwiseModel, Verdict

class Flaky(PairwiseModel):
    def fingerprint(self):
        return "flaky-judge"

    def compare(self, batch):
        return [Verdict(None, error="HTTP 500 from the server") if r.first == "x" else Verdict(True) for r in batch]

def make():
    return Flaky()
''')
    monkeypatch.syspath_prepend(pytester.path)
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "python:judges:make", "--rmb-data", "data",
                                "--rmb-json", "s.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    outcomes = result.parseoutcomes()
    assert (outcomes["passed"], outcomes["failed"], outcomes.get("missed", 0)) == (1, 1, 0)
    result.stdout.fnmatch_lines(["*the model could not be asked: HTTP 500 from the server*"])
    cached = [json.loads(line) for line in (default_cache_dir() / "flaky-judge.jsonl").read_text().splitlines()]
    assert [entry["v"]["won"] for entry in cached] == [True]


def test_a_conftest_can_replace_the_model_with_a_pairwise_object(pytester):
    pytester.makeconftest(PREFER_LONGER_JUDGE + '''
import pytest

@pytest.fixture(scope="session")
def rmb_model():
    return PreferLonger()
''')
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "my-judge", "--rmb-data", "sample",
                                "--rmb-json", "s.json")
    assert result.ret == 0
    summary = json.loads((pytester.path / "s.json").read_text())
    assert summary["model"] == "my-judge"
    assert sections_of(summary) == length_sections(SAMPLE_DATA)


def test_an_object_that_is_no_model_is_a_clear_error(pytester, monkeypatch):
    pytester.makepyfile(nothing="def make():\n    return object()\n")
    monkeypatch.syspath_prepend(pytester.path)
    result = pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", "python:nothing:make", "--rmb-data", "sample")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*object is not a reward model: give it score(batch)*or compare(batch)*"])


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the real RMB data is not at {SHARED_DATA}")
def test_a_pairwise_model_gives_the_length_baselines_sections_on_the_full_data(tmp_path):
    (tmp_path / "judges.py").write_text(textwrap.dedent(PREFER_LONGER_JUDGE))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rmb-model", "python:judges:make",
         "--rmb-data", str(SHARED_DATA), "--rmb-json", "s.json", "--rmb-show-misses", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert sections_of(summary) == length_sections(SHARED_DATA)
