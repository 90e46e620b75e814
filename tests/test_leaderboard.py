"""``pytest-rmb leaderboard`` as users run it: real runs on the bundled sample, then the command as a subprocess."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from statistics import NormalDist

import pytest

import pytest_rmb
from tests.helpers import SAMPLE_DATA, run_rmb

PACKAGE_ROOT = str(Path(pytest_rmb.__file__).resolve().parents[1])
SECTIONS = ("helpfulness.pairwise", "helpfulness.bon", "harmlessness.pairwise", "harmlessness.bon")
KINDS = ("pairwise", "bon")

run = partial(run_rmb, options=("--rmb-data", "sample"))

# A python: model that prefers the shorter answer: the length baseline turned round.
SHORTEST = '''
class Shortest:
    def score(self, batch):
        return [-float(len(request.response)) for request in batch]

def make():
    return Shortest()
'''


def command(cwd, *args, columns=200, pythonpath=PACKAGE_ROOT):
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": pythonpath}
    env.pop("TERM", None)
    return subprocess.run([sys.executable, "-m", "pytest_rmb", *args], check=False, cwd=cwd,
                          capture_output=True, text=True, env=env)


def recount(summary):
    """(overall, per-section (n, right)) counted from the per-sample outcomes with plain Python."""
    sections = {}
    for key, right in summary["outcomes"].items():
        scenario, kind, _ = key.split("|", 2)
        section = f"{summary['scenarios'][scenario]['goal']}.{kind}"
        n, correct = sections.get(section, (0, 0))
        sections[section] = (n + 1, correct + right)
    return sum(c / n for n, c in sections.values()) / len(sections), sections


def paired_p(upper, lower):
    """The overall's two-sided p-value under the sign test's null, by its normal approximation."""
    sections = {}
    for key in upper["outcomes"]:
        scenario, kind, _ = key.split("|", 2)
        section = f"{upper['scenarios'][scenario]['goal']}.{kind}"
        n, lost, gained = sections.get(section, (0, 0, 0))
        a, b = upper["outcomes"][key], lower["outcomes"][key]
        sections[section] = (n + 1, lost + (a and not b), gained + (b and not a))
    count = len(sections)
    delta = sum((g - lo) / n for n, lo, g in sections.values()) / count
    sd = math.sqrt(sum((lo + g) / n**2 for n, lo, g in sections.values())) / count
    return 2 * (1 - NormalDist().cdf(abs(delta) / sd)) if sd else 1.0


def holm(p_values):
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def markdown_ranking(text):
    """The ranking table of the Markdown file: one dict per row."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "Goal":
            break
        rows.append(dict(zip(header, cells)))
    return rows


@pytest.fixture
def runs(pytester):
    pytester.makepyfile(shortest=SHORTEST)
    run(pytester, "--rmb-model", "length", "--rmb-json", "length.json")
    run(pytester, "--rmb-model", "python:shortest:make", "--rmb-json", "shortest.json")
    run(pytester, "--rmb-model", "random", "--rmb-json", "random.json")
    run(pytester, "--rmb-model", "random", "--rmb-seed", "3", "--rmb-json", "random3.json")
    return {name: json.loads((pytester.path / f"{name}.json").read_text())
            for name in ("length", "shortest", "random", "random3")}


def test_runs_are_ranked_with_intervals_and_their_gaps_tested(pytester, runs):
    files = ["random.json", "shortest.json", "length.json", "random3.json"]
    done = command(pytester.path, "leaderboard", *files, "--markdown", "out/board.md")
    assert done.returncode == 0, done.stderr
    rows = markdown_ranking((pytester.path / "out/board.md").read_text())

    expected = sorted(((recount(runs[f.removesuffix(".json")])[0], f) for f in files), reverse=True)
    assert [row["Model (file)"].split("(")[1].rstrip(")") for row in rows] == [f for _, f in expected]
    assert [row["Rank"] for row in rows] == ["1", "2", "3", "4"]
    assert [row["Run"] for row in rows] == ["A", "B", "C", "D"]
    for row, (value, name) in zip(rows, expected):
        summary = runs[name.removesuffix(".json")]
        assert row["Overall"] == f"{value:.4f}"
        low, high = summary["overall_ci95"]
        assert row["95% interval"] == f"[{low:.4f}, {high:.4f}]"

    # Every run has the same samples: each gap is paired, tested as compare tests the overall, Holm over three.
    ordered = [runs[name.removesuffix(".json")] for _, name in expected]
    p_values = [paired_p(ordered[i], ordered[i + 1]) for i in range(3)]
    adjusted = holm(p_values)
    for i, row in enumerate(rows[:3]):
        star = "*" if adjusted[i] < 0.05 else ""
        assert row["Next"].split() == [f"{expected[i][0] - expected[i + 1][0]:+.4f}{star}", "paired"]
        assert float(row["p adj."]) == pytest.approx(adjusted[i], rel=5e-3)
    assert rows[3]["Next"] == rows[3]["p adj."] == ""
    # length over its reverse is a real gap; the two random seeds are not told apart.
    assert rows[0]["Next"].split()[0].endswith("*") and expected[0][1] == "length.json"
    assert "(Holm's correction over 3 neighbour pairs)" in done.stdout
    # Provenance is listed against the first-ranked run: the other seed is named.
    assert "provenance random (random3.json) vs length (length.json): seed: 0 -> 3" in done.stdout


def test_the_terminal_keeps_within_80_columns_and_shows_each_scenario_per_run(pytester, runs):
    done = command(pytester.path, "leaderboard", "length.json", "random.json", "shortest.json", columns=80)
    assert done.returncode == 0, done.stderr
    assert max(len(line.rstrip()) for line in done.stdout.splitlines()) <= 80
    length, random_run, shortest = runs["length"], runs["random"], runs["shortest"]
    # The heatmap row of a scenario: its accuracy per run in rank order (length, then random or shortest).
    order = sorted([length, random_run, shortest], key=lambda s: -recount(s)[0])
    scenario = "code/data_management"
    line = next(line for line in done.stdout.splitlines() if line.startswith(scenario + " "))
    right = [[v for k, v in s["outcomes"].items() if k.startswith(f"{scenario}|pairwise|")] for s in order]
    assert line.split()[1:] == [f"{sum(r) / len(r):.4f}" for r in right]


def test_correction_none_leaves_the_p_values_as_they_are_and_says_so(pytester, runs):
    done = command(pytester.path, "leaderboard", "length.json", "random.json", "random3.json", "--correction", "none",
                   "--markdown", "board.md")
    assert done.returncode == 0, done.stderr
    assert "(no correction)" in done.stdout
    ordered = sorted([runs["length"], runs["random"], runs["random3"]], key=lambda s: -recount(s)[0])
    rows = markdown_ranking((pytester.path / "board.md").read_text())
    for i in range(2):
        assert float(rows[i]["p adj."]) == pytest.approx(paired_p(ordered[i], ordered[i + 1]), rel=5e-3)


def test_runs_on_other_samples_are_compared_unpaired_from_their_intervals(pytester, runs):
    run(pytester, "--rmb-model", "length", "-m", "pairwise", "--rmb-json", "pairs.json")
    pairs = json.loads((pytester.path / "pairs.json").read_text())
    done = command(pytester.path, "leaderboard", "pairs.json", "random.json", "--markdown", "board.md")
    assert done.returncode == 0, done.stderr
    rows = markdown_ranking((pytester.path / "board.md").read_text())
    top, bottom = sorted([pairs, runs["random"]], key=lambda s: -s["overall"])
    se = [(s["overall_ci95"][1] - s["overall_ci95"][0]) / (2 * NormalDist().inv_cdf(0.975)) for s in (top, bottom)]
    z = (top["overall"] - bottom["overall"]) / math.hypot(*se)
    p = 2 * (1 - NormalDist().cdf(z))
    assert rows[0]["Next"].split() == [f"{top['overall'] - bottom['overall']:+.4f}{'*' if p < 0.05 else ''}",
                                       "unpaired"]
    # The selection differs, and the output says so: pairs.json read only the pairwise files.
    assert "data files read only by" in done.stdout


def test_a_partial_run_is_flagged_beside_its_numbers(pytester, runs):
    # Misses are failed tests: --maxfail stops the run early.
    run(pytester, "--rmb-model", "random", "--maxfail", "2", "--rmb-json", "partial.json")
    partial = json.loads((pytester.path / "partial.json").read_text())
    items = partial["items"]
    assert partial["partial"] and items["ran"] < items["selected"]
    done = command(pytester.path, "leaderboard", "length.json", "partial.json")
    assert done.returncode == 0, done.stderr
    assert (f"note: random (partial.json) (partial run: {items['ran']} of {items['selected']} items ran)"
            in done.stdout)
    assert "note: the bundled sample is small and favours longer answers" in done.stdout


def test_runs_on_different_data_are_refused_unless_allowed(pytester, runs):
    data = pytester.path / "changed"
    shutil.copytree(SAMPLE_DATA, data)
    target = next(p for p in sorted(data.rglob("*.json")) if "Pairwise" in str(p))
    records = json.loads(target.read_text())
    records[0]["chosen"]["answer"] = records[0]["chosen"]["answer"] + " (edited)"
    target.write_text(json.dumps(records))
    run_rmb(pytester, "--rmb-data", str(data), "--rmb-model", "length", "--rmb-json", "changed.json")
    relative = target.relative_to(data).as_posix()

    refused = command(pytester.path, "leaderboard", "length.json", "changed.json")
    assert refused.returncode == 2
    assert "runs on different data are not ranked together" in refused.stderr
    assert "length.json and changed.json read different contents of the data file" in refused.stderr
    assert relative in refused.stderr
    assert "--allow-different-data" in refused.stderr

    allowed = command(pytester.path, "leaderboard", "length.json", "changed.json", "--allow-different-data")
    assert allowed.returncode == 0, allowed.stderr
    assert "RUNS ON DIFFERENT DATA" in allowed.stdout


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        found = dict(attrs).get("id") or ""
        if found.startswith("cell-"):
            self.cells.append(found)


def test_the_html_page_has_one_heatmap_cell_per_scenario_kind_and_run(pytester, runs):
    pytest.importorskip("matplotlib")
    done = command(pytester.path, "leaderboard", "length.json", "random.json", "shortest.json", "--html", "out/b.html")
    assert done.returncode == 0, done.stderr
    page = (pytester.path / "out/b.html").read_text()
    parser = PageParser()
    parser.feed(page)
    expected = {(kind, scenario) for s in runs.values() for scenario, row in s["scenarios"].items()
                for kind in KINDS if row[kind]["total"]}
    assert len(parser.cells) == len(set(parser.cells)) == len(expected) * 3
    assert {(c.split("-")[1], c.split("-", 3)[3]) for c in parser.cells} == expected
    assert "svg" in parser.tags and "table" in parser.tags
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page


def test_without_matplotlib_html_names_the_pip_command(pytester, runs):
    blocker = pytester.path / "blocked" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is not installed here')\n")
    done = command(pytester.path, "leaderboard", "length.json", "random.json", "--html", "b.html",
                   pythonpath=f"{pytester.path / 'blocked'}{os.pathsep}{PACKAGE_ROOT}")
    assert done.returncode == 2
    assert "--html draws its charts with matplotlib, which is not installed: pip install 'pytest-rmb[report]'" \
        in done.stderr
    assert not (pytester.path / "b.html").exists()


def test_a_file_that_is_not_a_summary_is_named(pytester, runs):
    (pytester.path / "notes.json").write_text("[1, 2]")
    done = command(pytester.path, "leaderboard", "length.json", "notes.json")
    assert done.returncode == 2
    assert "pytest-rmb leaderboard: notes.json: not a pytest-rmb --rmb-json summary" in done.stderr
