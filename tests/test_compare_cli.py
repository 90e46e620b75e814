"""``pytest-rmb compare`` as users run it: a subprocess over real --rmb-json files."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction
from functools import partial
from pathlib import Path
from statistics import NormalDist

import pytest

import pytest_rmb
from tests.helpers import SAMPLE_DATA, SHARED_DATA, run_rmb

# The package under test, whichever checkout it is imported from.
PACKAGE_ROOT = str(Path(pytest_rmb.__file__).resolve().parents[1])
SAMPLE_ITEMS = 147  # the bundled sample's samples, one item each
SECTIONS = ("helpfulness.pairwise", "helpfulness.bon", "harmlessness.pairwise", "harmlessness.bon")


run = partial(run_rmb, options=("--rmb-data", "sample"))


def compare(cwd, *args, columns=200):
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": PACKAGE_ROOT}
    env.pop("TERM", None)
    return subprocess.run([sys.executable, "-m", "pytest_rmb", "compare", *args], check=False, cwd=cwd,
                          capture_output=True, text=True, env=env)


def by_section(summary, keys):
    """Per-section lists of outcomes for these keys, grouped with the goal the summary itself gives."""
    out = {s: [] for s in SECTIONS}
    for key in sorted(keys):
        scenario, kind, _ = key.split("|", 2)
        out[f"{summary['scenarios'][scenario]['goal']}.{kind}"].append(bool(summary["outcomes"][key]))
    return {s: v for s, v in out.items() if v}


def overall(sections):
    return sum(sum(v) / len(v) for v in sections.values()) / len(sections)


def table_row(stdout, metric):
    return next(line for line in stdout.splitlines() if line.strip().startswith(metric + " "))


@pytest.fixture
def runs(pytester):
    run(pytester, "--rmb-model", "length", "--rmb-json", "length.json")
    run(pytester, "--rmb-model", "random", "-m", "code or harmlessness and bon", "--rmb-json", "part.json")
    run(pytester, "--rmb-model", "random", "--rmb-seed", "3", "--rmb-json", "random3.json")
    return {name: json.loads((pytester.path / f"{name}.json").read_text()) for name in ("length", "part", "random3")}


def test_runs_are_compared_on_the_samples_they_share(pytester, runs):
    done = compare(pytester.path, "length.json", "part.json", "random3.json")
    assert done.returncode == 0, done.stderr
    length, part, random3 = runs["length"], runs["part"], runs["random3"]
    shared_b = set(length["outcomes"]) & set(part["outcomes"])
    shared_c = set(length["outcomes"]) & set(random3["outcomes"])
    assert 0 < len(shared_b) < len(length["outcomes"]) == len(shared_c)
    out = done.stdout
    assert f"A  length (length.json): reference, {len(length['outcomes'])} samples" in out
    assert f"B  random (part.json): {len(shared_b)} samples shared with A" in out
    assert f"C  random (random3.json): {len(shared_c)} samples shared with A" in out
    assert "note: the runs share different samples with A" in out

    # B and its delta: both runs recomputed over the shared samples only.
    b_value = overall(by_section(part, shared_b))
    b_delta = b_value - overall(by_section(length, shared_b))
    c_value = overall(by_section(random3, shared_c))
    c_delta = c_value - overall(by_section(length, shared_c))
    a_value = overall(by_section(length, shared_b & shared_c))
    row = table_row(out, "overall").split()
    assert row[1] == f"{a_value:.4f}"
    assert row[2] == f"{b_value:.4f}" and row[3].rstrip("*") == f"{b_delta:+.4f}"
    assert row[4] == f"{c_value:.4f}" and row[5].rstrip("*") == f"{c_delta:+.4f}"
    for section, values in by_section(part, shared_b).items():
        cells = table_row(out, section).split()
        assert cells[2] == f"{sum(values) / len(values):.4f}"
    # B shares fewer rows with A than C does: each is corrected over its own.
    rows_b, rows_c = (len(expected_p_values(length, other, scenarios=False)) for other in (part, random3))
    assert rows_b < rows_c
    assert f"Holm's correction over each run's rows (B: {rows_b}, C: {rows_c})" in " ".join(out.split())


def test_runs_without_per_sample_outcomes_get_no_star_and_say_so(pytester, runs):
    for name in ("length", "random3"):
        summary = runs[name]
        # As summaries from before per-sample outcomes were kept (no schema version: read as 1).
        del summary["outcomes"], summary["schema_version"]
        (pytester.path / f"{name}.json").write_text(json.dumps(summary))
    done = compare(pytester.path, "length.json", "random3.json", "--scenarios", "--correction", "none")
    assert done.returncode == 0, done.stderr
    assert "* significant at alpha=0.05, but no row could be tested" in " ".join(done.stdout.split())
    assert "note: B or A has no per-sample outcomes" in done.stdout
    assert stars_in(done.stdout, 1) == set()


def test_a_run_sharing_nothing_is_said_not_compared_and_fails_the_command(pytester, runs):
    run(pytester, "--rmb-model", "random", "-m", "chat", "--rmb-json", "chat.json")
    run(pytester, "--rmb-model", "length", "-m", "code", "--rmb-json", "code.json")
    done = compare(pytester.path, "code.json", "chat.json")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "pytest-rmb compare: chat.json shares no sample with code.json: nothing was compared (other data, "
        "other scenarios, or selections that do not overlap)"]
    assert "B  random (chat.json): 0 samples shared with A" in done.stdout
    assert "note: B shares no samples with A: nothing to compare" in done.stdout
    assert table_row(done.stdout, "overall").split()[1:] == ["-", "-"]

    # Among others that do share: only the stranger is named, and the command still fails.
    mixed = compare(pytester.path, "code.json", "part.json", "chat.json")
    assert mixed.returncode == 1
    assert mixed.stderr.splitlines() == [
        "pytest-rmb compare: chat.json shares no sample with code.json: nothing was compared (other data, "
        "other scenarios, or selections that do not overlap)"]


def test_a_partial_run_and_a_run_on_incomplete_data_say_so_beside_their_names(pytester, runs):
    stopped = run(pytester, "--rmb-model", "length", "-x", "--rmb-json", "stopped.json")
    ran = sum(stopped.parseoutcomes().get(name, 0) for name in ("passed", "missed"))
    data = pytester.path / "data"
    shutil.copytree(SAMPLE_DATA, data)
    (data / "Pairwise_set/Harmlessness/S5.json").unlink()
    run_rmb(pytester, "--rmb-model", "length", "--rmb-data", "data", "--rmb-json", "lacking.json")
    done = compare(pytester.path, "length.json", "stopped.json", "lacking.json")
    assert done.returncode == 0, done.stderr
    with_s5 = len(json.loads((SAMPLE_DATA / "Pairwise_set/Harmlessness/S5.json").read_text(encoding="utf-8")))
    assert f"A  length (length.json): reference, {SAMPLE_ITEMS} samples\n" in done.stdout
    assert f"B  length (stopped.json): {ran} samples shared with A (partial run: {ran} of {SAMPLE_ITEMS} items ran)" \
        in done.stdout
    assert (f"C  length (lacking.json): {SAMPLE_ITEMS - with_s5} samples shared with A "
            "(incomplete data: 1 data file(s) missing)") in done.stdout


def test_alpha_sets_the_significance_marks_exactly(pytester, runs):
    run(pytester, "--rmb-model", "random", "--rmb-json", "random.json")
    random = json.loads((pytester.path / "random.json").read_text())
    random3 = runs["random3"]
    section = "helpfulness.pairwise"
    lost, gained, _ = row_counts(random, random3, set(random["outcomes"]))[section]
    p = sign_test(lost, gained)
    assert 0 < p < 1
    delta = (gained - lost) / len(by_section(random, set(random["outcomes"]))[section])
    at = compare(pytester.path, "random.json", "random3.json", "--alpha", repr(p), "--correction", "none")
    above = compare(pytester.path, "random.json", "random3.json", "--alpha", repr(math.nextafter(p, 1)),
                    "--correction", "none")
    assert at.returncode == above.returncode == 0, at.stderr + above.stderr
    assert table_row(at.stdout, section).split()[3] == f"{delta:+.4f}"
    assert table_row(above.stdout, section).split()[3] == f"{delta:+.4f}*"
    assert f"alpha={p:g}" in " ".join(at.stdout.split())
    bad = compare(pytester.path, "random.json", "random3.json", "--alpha", "5")
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr


# --- every row tested, corrected for the rows shown: each p-value recomputed here from the outcomes ---


def row_counts(reference, other, keys):
    """metric -> (lost, gained, samples) of other against reference, per section, task and scenario
    row, grouped by the scenario rows the reference summary itself carries."""
    counts = {}
    for key in keys:
        scenario, kind, _ = key.split("|", 2)
        row = reference["scenarios"][scenario]
        old, new = bool(reference["outcomes"][key]), bool(other["outcomes"][key])
        for metric in (f"{row['goal']}.{kind}", f"task:{row['task']}.{kind}", f"scenario:{scenario}.{kind}"):
            lost, gained, n = counts.get(metric, (0, 0, 0))
            counts[metric] = (lost + (old and not new), gained + (new and not old), n + 1)
    return counts


def sign_test(lost, gained):
    """Exact two-sided sign test: twice the Binomial(lost + gained, 1/2) tail at the smaller count."""
    d = lost + gained
    tail = sum(Fraction(math.comb(d, k), 2**d) for k in range(min(lost, gained) + 1))
    return min(1.0, float(2 * tail))


def expected_p_values(reference, other, *, scenarios):
    """metric -> p of every row the table shows, the overall row by the normal approximation of the
    sign-flip null of the mean of the sections' deltas."""
    keys = set(reference["outcomes"]) & set(other["outcomes"])
    counts = row_counts(reference, other, keys)
    p = {metric: sign_test(lost, gained) for metric, (lost, gained, _) in counts.items()
         if scenarios or not metric.startswith("scenario:")}
    sections = [counts[s] for s in SECTIONS if s in counts]
    delta = sum((gained - lost) / n for lost, gained, n in sections) / len(sections)
    sd = math.sqrt(sum((lost + gained) / n**2 for lost, gained, n in sections)) / len(sections)
    p["overall"] = 2 * NormalDist().cdf(-abs(delta) / sd) if sd else 1.0
    return p


def starred(p_values, correction, alpha=0.05):
    """The rows a correction rejects, as its rejection procedure is stated (not via adjusted p-values)."""
    ranked = sorted(p_values, key=p_values.get)
    m = len(ranked)
    if correction == "none":
        return {metric for metric in ranked if p_values[metric] < alpha}
    if correction == "holm":  # step down: reject while the k-th smallest is below alpha / (m - k + 1)
        rejected = set()
        for k, metric in enumerate(ranked, start=1):
            if not p_values[metric] < alpha / (m - k + 1):
                break
            rejected.add(metric)
        return rejected
    # bh, step up: reject the k smallest, k the largest rank whose p is below k * alpha / m
    passing = [k for k, metric in enumerate(ranked, start=1) if p_values[metric] < k * alpha / m]
    return set(ranked[:max(passing, default=0)])


def stars_in(stdout, run_index):
    """The metrics whose delta against A carries a star in run ``run_index`` (1: B, 2: C)."""
    stars = set()
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) > 2 * run_index + 1 and (cells[0] in ("overall", *SECTIONS) or ":" in cells[0]):
            if cells[2 * run_index + 1].endswith("*"):
                stars.add(cells[0])
    return stars


@pytest.fixture
def sample_runs(pytester):
    run(pytester, "--rmb-model", "random", "--rmb-seed", "1", "--rmb-json", "random1.json")
    run(pytester, "--rmb-model", "length", "--rmb-json", "length.json")
    run(pytester, "--rmb-model", "random", "--rmb-seed", "2", "--rmb-json", "random2.json")
    return [json.loads((pytester.path / f"{name}.json").read_text()) for name in ("random1", "length", "random2")]


@pytest.mark.parametrize("scenarios", [True, False])
def test_every_row_shown_is_tested_and_corrected_per_run(pytester, sample_runs, scenarios):
    reference, *others = sample_runs
    expected = [expected_p_values(reference, other, scenarios=scenarios) for other in others]
    assert len(expected[0]) == len(expected[1])
    rows = len(expected[0])
    # Overall, the four sections, both kinds of every task with samples (and of every scenario).
    tasks = {s["task"] for s in reference["scenarios"].values()}
    assert rows == 1 + 4 + 2 * len(tasks) + (2 * len(reference["scenarios"]) if scenarios else 0)
    flags = ["--scenarios"] if scenarios else []
    named = {"none": f"no correction for testing {rows} rows", "holm": f"Holm's correction over {rows} rows",
             "bh": f"Benjamini-Hochberg correction (false discovery rate) over {rows} rows"}
    found = {}
    for correction, phrase in named.items():
        done = compare(pytester.path, "random1.json", "length.json", "random2.json", "--correction", correction,
                       *flags)
        assert done.returncode == 0, done.stderr
        assert f"* significant at alpha=0.05 (two-sided paired sign test; {phrase})" in " ".join(done.stdout.split())
        found[correction] = [stars_in(done.stdout, index) for index in (1, 2)]
        assert found[correction] == [starred(p, correction) for p in expected], correction
    # Holm's is the default; length's real lead keeps its stars on the overall row and the sections
    # with the most samples (the sample's 12-sample harmlessness sections do not survive 129 rows).
    default = compare(pytester.path, "random1.json", "length.json", "random2.json", *flags)
    assert [stars_in(default.stdout, index) for index in (1, 2)] == found["holm"]
    assert {"overall", "helpfulness.pairwise", "helpfulness.bon"} <= found["holm"][0]
    # The correction is what takes stars away: Holm keeps fewer than BH, BH no more than none.
    assert found["holm"][0] <= found["bh"][0] <= found["none"][0]
    assert found["holm"][0] != found["none"][0]


def test_the_page_shows_the_rows_stars_and_correction_of_the_terminal(pytester, sample_runs):
    done = compare(pytester.path, "random1.json", "length.json", "--scenarios", "--html", "page.html")
    assert done.returncode == 0, done.stderr
    page = (pytester.path / "page.html").read_text(encoding="utf-8")
    rows = len(expected_p_values(sample_runs[0], sample_runs[1], scenarios=True))
    assert (f"Every row is tested: * significant at alpha=0.05 (two-sided paired sign test; Holm&#x27;s "
            f"correction over {rows} rows)") in " ".join(page.split())
    cells = re.findall(r"<tr class='(\w+)'><td><code>([^<]+)</code></td><td>[^<]*</td><td>[^<]*</td>"
                       r"<td class='(\w*)'>([^<]*)</td></tr>", page)
    assert len(cells) == rows and sum(group == "scenario" for group, *_ in cells) == 2 * len(
        sample_runs[0]["scenarios"])
    assert {metric for _, metric, _, text in cells if text.endswith("*")} == stars_in(done.stdout, 1)
    # Without --scenarios the page, like the table, has no scenario rows.
    compare(pytester.path, "random1.json", "length.json", "--html", "fewer.html")
    assert "<tr class='scenario'>" not in (pytester.path / "fewer.html").read_text(encoding="utf-8")


def test_an_unknown_correction_is_refused_naming_the_choices(pytester, sample_runs):
    done = compare(pytester.path, "random1.json", "length.json", "--correction", "bonferroni")
    assert done.returncode == 2
    assert "argument --correction: invalid choice: 'bonferroni'" in done.stderr
    assert all(choice in done.stderr for choice in ("holm", "bh", "none"))


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Two runs of random (seeds 1 and 2) and one of length over the real data, made once."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real RMB data not found at {SHARED_DATA}")
    folder = tmp_path_factory.mktemp("real")
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    for name, args in (("random1", ("random", "--rmb-seed", "1")), ("random2", ("random", "--rmb-seed", "2")),
                       ("length", ("length",))):
        subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rmb-model", *args,
                        "--rmb-data", str(SHARED_DATA), "--rmb-json", f"{name}.json"],
                       cwd=folder, env=env, capture_output=True, check=True)
    return folder, [json.loads((folder / f"{name}.json").read_text()) for name in ("random1", "random2", "length")]


def test_two_runs_of_random_on_the_real_data_keep_no_star_after_holm(real_runs):
    folder, (random1, random2, length) = real_runs
    expected = expected_p_values(random1, random2, scenarios=True)
    uncorrected = compare(folder, "random1.json", "random2.json", "length.json", "--scenarios", "--correction",
                          "none")
    holm = compare(folder, "random1.json", "random2.json", "length.json", "--scenarios")
    assert uncorrected.returncode == holm.returncode == 0, uncorrected.stderr + holm.stderr
    chance = stars_in(uncorrected.stdout, 1)
    # Over a hundred-odd rows, two runs of the same random model differ "significantly" on some.
    assert chance == starred(expected, "none") and len(chance) >= 1
    assert stars_in(holm.stdout, 1) == set()
    # A real difference keeps its stars where the samples are many: overall and the big sections.
    real = expected_p_values(random1, length, scenarios=True)
    kept = stars_in(holm.stdout, 2)
    assert kept == starred(real, "holm")
    assert {"overall", "helpfulness.pairwise", "helpfulness.bon", "harmlessness.pairwise"} <= kept
    assert kept < stars_in(uncorrected.stdout, 2)


NUMBER = re.compile(r"^[+-]?\d\.\d{4}\*?$|^-$")


def test_the_table_fits_80_columns_by_wrapping_names_and_uses_a_wide_terminal(pytester, runs):
    narrow = compare(pytester.path, "length.json", "part.json", "random3.json", "--scenarios", columns=80)
    wide = compare(pytester.path, "length.json", "part.json", "random3.json", "--scenarios", columns=200)
    assert narrow.returncode == wide.returncode == 0, narrow.stderr
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
    long_name = "scenario:code/quality_and_optimization.pairwise"
    assert long_name not in narrow.stdout  # folded over two lines
    assert any(line.split()[:1] == [long_name] for line in wide.stdout.splitlines())
    assert max(len(line) for line in wide.stdout.splitlines()) > 80

    def numbers(stdout):
        return [cell for line in stdout.splitlines() for cell in line.split() if NUMBER.match(cell)]

    # Same numbers in the same order at both widths, none cut or broken.
    assert numbers(narrow.stdout) == numbers(wide.stdout)
    assert len(numbers(wide.stdout)) > 3 * 100
    assert "…" not in narrow.stdout


def test_provenance_differences_are_printed_before_the_numbers(pytester, runs):
    for name, model, digest in (("length", "length", "aa"), ("random3", "random", "bb")):
        summary = runs[name]
        summary["provenance"] = {"model": model, "seed": 0 if name == "length" else 3,
                                 "data_files": {"Pairwise_set/Helpfulness/Chat/Discussion.json": digest}}
        # Edited by hand, it is no longer what pytest-rmb wrote: it claims no schema version (read as 1).
        del summary["schema_version"]
        (pytester.path / f"{name}.json").write_text(json.dumps(summary))
    done = compare(pytester.path, "length.json", "random3.json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    expected = ["provenance B vs A: model: length -> random", "provenance B vs A: seed: 0 -> 3",
                "provenance B vs A: data file Pairwise_set/Helpfulness/Chat/Discussion.json changed"]
    positions = [lines.index(line) for line in expected]
    assert positions == sorted(positions) and positions[-1] < lines.index(table_row(done.stdout, "overall"))


def test_a_failed_run_summary_is_refused(pytester, runs):
    (pytester.path / "failed.json").write_text(json.dumps({"status": "error", "reason": "out of disk"}))
    done = compare(pytester.path, "length.json", "failed.json")
    assert done.returncode != 0
    assert "failed.json: that run failed and has no results: out of disk" in done.stderr
