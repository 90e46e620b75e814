"""``pytest-rmb compare`` as users run it: a subprocess over real --rmb-json files."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

import pytest_rmb
from tests.helpers import SAMPLE_DATA, run_rmb
from tests.test_numbers import expected_paired

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
    keys = set(random["outcomes"])
    old, new = by_section(random, keys), by_section(random3, keys)
    want = expected_paired(old, new, seed=0, resamples=1000)["overall"]
    p = min(want["p_drop"], want["p_gain"])
    assert 0 < p < 1
    at = compare(pytester.path, "random.json", "random3.json", "--alpha", repr(p))
    above = compare(pytester.path, "random.json", "random3.json", "--alpha", repr(math.nextafter(p, 1)))
    assert at.returncode == above.returncode == 0, at.stderr + above.stderr
    assert table_row(at.stdout, "overall").split()[3] == f"{want['delta']:+.4f}"
    assert table_row(above.stdout, "overall").split()[3] == f"{want['delta']:+.4f}*"
    assert f"alpha={p:g}" in " ".join(at.stdout.split())
    bad = compare(pytester.path, "random.json", "random3.json", "--alpha", "5")
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr


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
