"""``pytest-rmb validity`` as users run it: real runs of four models on the bundled sample, a CSV made here."""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET

import pytest

from tests.helpers import run_rmb
from tests.test_leaderboard import PACKAGE_ROOT, SHORTEST, command, recount

NAMES = {"length": "length", "shortest": "python:shortest:make", "random": "random", "random3": "random-3"}
# The downstream results, made up here: a win rate, and a score with a tie.
WIN_RATE = {"length": 40.0, "python:shortest:make": 10.0, "random": 20.0, "random-3": 25.0}
TIED = {"length": 5.0, "python:shortest:make": 1.0, "random": 3.0, "random-3": 3.0}
RUN_FILES = ["length.json", "shortest.json", "random.json", "random3.json"]
RENAME = ["--name", "random3.json=random-3"]


def write_csv(path, *tables):
    lines = ["model,metric,value"]
    for metric, values in tables:
        lines += [f"{model},{metric},{value}" for model, value in values.items()]
    path.write_text("\n".join(lines) + "\n")


def pearson_by_hand(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


@pytest.fixture
def runs(pytester):
    pytester.makepyfile(shortest=SHORTEST)
    for options in (("--rmb-model", "length", "--rmb-json", "length.json"),
                    ("--rmb-model", "python:shortest:make", "--rmb-json", "shortest.json"),
                    ("--rmb-model", "random", "--rmb-json", "random.json"),
                    ("--rmb-model", "random", "--rmb-seed", "3", "--rmb-json", "random3.json")):
        run_rmb(pytester, "--rmb-data", "sample", *options)
    summaries = {name: json.loads((pytester.path / f"{name}.json").read_text()) for name in NAMES}
    return {NAMES[name]: summary for name, summary in summaries.items()}


def test_correlations_per_row_against_a_hand_made_csv(pytester, runs):
    write_csv(pytester.path / "down.csv", ("win_rate", WIN_RATE), ("tied", TIED))
    done = command(pytester.path, "validity", *RUN_FILES, *RENAME, "--downstream", "down.csv", "--json", "v.json")
    assert done.returncode == 0, done.stderr
    result = json.loads((pytester.path / "v.json").read_text())
    models = list(WIN_RATE)
    overall = [recount(runs[m])[0] for m in models]
    assert len(set(overall)) == 4  # no ties among the accuracies: the textbook formula holds

    rows = {entry["row"]: entry for entry in result["metrics"]["win_rate"]["rows"]}
    entry = rows["overall"]
    y = [WIN_RATE[m] for m in models]
    assert entry["n"] == 4
    assert entry["pearson"] == pytest.approx(pearson_by_hand(overall, y))
    rank_x = {m: sorted(overall).index(v) + 1 for m, v in zip(models, overall)}
    rank_y = {m: sorted(y).index(v) + 1 for m, v in zip(models, y)}
    d2 = sum((rank_x[m] - rank_y[m]) ** 2 for m in models)
    assert entry["spearman"] == pytest.approx(1 - 6 * d2 / (4 * (4 ** 2 - 1)))
    for name in ("pearson_ci95", "spearman_ci95"):
        low, high = entry[name]
        assert -1 - 1e-9 <= low <= high <= 1 + 1e-9
    overall_line = next(line for line in done.stdout.splitlines() if line.startswith("overall "))
    assert overall_line.split()[1:3] == ["4", f"{entry['pearson']:+.2f}"]

    # A section, from its own outcomes.
    section = [recount(runs[m])[1]["helpfulness.bon"] for m in models]
    assert rows["helpfulness.bon"]["pearson"] == pytest.approx(
        pearson_by_hand([c / n for n, c in section], y))

    # Ties share the mean of their ranks: random and random-3 both hold ranks 2 and 3.
    tied = {entry["row"]: entry for entry in result["metrics"]["tied"]["rows"]}["overall"]
    tied_ranks = {"length": 4, "python:shortest:make": 1, "random": 2.5, "random-3": 2.5}
    assert tied["spearman"] == pytest.approx(
        pearson_by_hand([rank_x[m] for m in models], [tied_ranks[m] for m in models]))

    # Seeded: the same command gives the same intervals.
    again = command(pytester.path, "validity", *RUN_FILES, *RENAME, "--downstream", "down.csv", "--json", "w.json")
    assert again.returncode == 0, again.stderr
    assert json.loads((pytester.path / "w.json").read_text())["metrics"] == result["metrics"]


@pytest.mark.parametrize(("csv", "message"), [
    ("model,metric,value\nlength,w,1\nrandom,w,2\ngpt-4,w,3\n",
     "down.csv:4: model 'gpt-4' matches no run (the runs are named 'length', 'python:shortest:make', 'random', "
     "'random-3'; --name RUN.json=NAME names a run)"),
    ("model,metric,value\nlength,w,abc\n", "down.csv:2: value 'abc' is not a finite number"),
    ("name,score\nlength,1\n", "down.csv:1: the header must be model,metric,value; found name,score"),
    ("model,metric,value\nlength,w,1\nrandom,w,2\n",
     "down.csv: metric 'w' has values for 2 model(s) (length, random); a correlation needs at least 3"),
    ("model,metric,value\nlength,w,1\nrandom,w,2\nlength,w,3\n",
     "down.csv:4: model 'length' has metric 'w' already on line 2"),
    ("model,metric,value\nlength,w\n", "down.csv:2: 2 fields, expected 3 (model,metric,value)"),
])
def test_csv_errors_name_file_line_and_value(pytester, runs, csv, message):
    (pytester.path / "down.csv").write_text(csv)
    done = command(pytester.path, "validity", *RUN_FILES, *RENAME, "--downstream", "down.csv")
    assert done.returncode == 2
    assert f"pytest-rmb validity: {message}" in done.stderr


def test_runs_sharing_a_name_and_too_few_runs_are_refused(pytester, runs):
    write_csv(pytester.path / "down.csv", ("win_rate", WIN_RATE))
    same = command(pytester.path, "validity", *RUN_FILES, "--downstream", "down.csv")
    assert same.returncode == 2
    assert ("two runs are named 'random' (random.json and random3.json): give each its own name with "
            "--name RUN.json=NAME") in same.stderr
    few = command(pytester.path, "validity", "length.json", "random.json", "--downstream", "down.csv")
    assert few.returncode == 2
    assert "give runs of at least 3 models" in few.stderr


def test_the_plot_is_an_svg_with_a_scatter_per_section(pytester, runs):
    pytest.importorskip("matplotlib")
    write_csv(pytester.path / "down.csv", ("win_rate", WIN_RATE))
    done = command(pytester.path, "validity", *RUN_FILES, *RENAME, "--downstream", "down.csv", "--plot", "out/v.svg")
    assert done.returncode == 0, done.stderr
    root = ET.parse(pytester.path / "out/v.svg").getroot()
    assert root.tag.endswith("svg")
    texts = [" ".join(t.itertext()) for t in root.iter() if t.tag.endswith("text")]
    titles = [t for t in texts if t.split("\n")[0].strip() in
              ("overall", "helpfulness.pairwise", "helpfulness.bon", "harmlessness.pairwise", "harmlessness.bon")]
    assert len(titles) == 5
    for model in WIN_RATE:
        assert sum(1 for t in texts if t == model) == 5  # each point labelled, in each of the five panels


def test_without_matplotlib_plot_names_the_pip_command(pytester, runs):
    write_csv(pytester.path / "down.csv", ("win_rate", WIN_RATE))
    blocker = pytester.path / "blocked" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is not installed here')\n")
    done = command(pytester.path, "validity", *RUN_FILES, *RENAME, "--downstream", "down.csv", "--plot", "v.svg",
                   pythonpath=f"{pytester.path / 'blocked'}{os.pathsep}{PACKAGE_ROOT}")
    assert done.returncode == 2
    assert "--plot draws its charts with matplotlib, which is not installed: pip install 'pytest-rmb[report]'" \
        in done.stderr


def test_the_statistics_by_hand():
    from pytest_rmb.stats import average_ranks, bootstrap_correlations, pearson, spearman

    assert average_ranks([30, 10, 30, 20, 30]) == [4.0, 1.0, 4.0, 2.0, 4.0]  # ranks 3, 4, 5 share 4
    # rho of [1, 2, 3, 4] with [10, 30, 20, 40]: ranks differ by 1 twice, 1 - 6 * 2 / (4 * 15)
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 12.666666666666666))
    assert pearson([0.5, 0.5, 0.5], [1, 2, 3]) is None
    # One model's value repeated: no resample has a defined coefficient.
    assert bootstrap_correlations([0.5, 0.5, 0.5], [1, 2, 3], seed=0, resamples=50) == {
        "pearson": None, "spearman": None}
