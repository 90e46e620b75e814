"""What a score means, run as a user runs it: the summary's analysis block and the terminal's
block after the tables, every figure recomputed here from the raw data files of the bundled sample."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest

from pytest_rmb.data import sample_dataset
from tests.helpers import run_rmb
from tests.test_style_generators import count_markdown_by_lines

run = partial(run_rmb, options=("--rmb-data", "sample"))

CONSTANT = '''
class Constant:
    def score(self, batch):
        return [0.0 for _ in batch]

def make():
    return Constant()
'''

# Scores a hundredth of the length: margins of a few units, so that sigmoid(margin) spreads out.
SCALED_LENGTH = '''
class ScaledLength:
    def score(self, batch):
        return [len(request.response) / 100 for request in batch]

def make():
    return ScaledLength()
'''


def raw_samples():
    """{(kind, uid): (goal, answers chosen/best first, their generators)} from the sample's files."""
    samples = {}
    root = sample_dataset()
    for path in sorted((root / "Pairwise_set").rglob("*.json")):
        goal = path.relative_to(root / "Pairwise_set").parts[0].lower()
        for item in json.loads(path.read_text()):
            answers = [item["chosen"], item["reject"]]
            samples[("pairwise", str(item["pair_uid"]))] = (goal, [a["answer"] for a in answers],
                                                            [a["llm_name"] for a in answers])
    for path in sorted((root / "BoN_set").rglob("*.json")):
        goal = path.relative_to(root / "BoN_set").parts[0].lower()
        for item in json.loads(path.read_text()):
            answers = [item["bon_best"], *item["loser_list"]]
            samples[("bon", str(item["bon_uid"]))] = (goal, [a["answer"] for a in answers],
                                                      [a["llm_name"] for a in answers])
    return samples


def summary_of(pytester, name):
    return json.loads((pytester.path / name).read_text())


def test_a_constant_scorer_ties_everywhere_and_gets_one_in_k(pytester):
    pytester.makepyfile(constant=CONSTANT)
    result = run(pytester, "--rmb-model", "python:constant:make", "--rmb-json", "s.json")
    ties = summary_of(pytester, "s.json")["analysis"]["ties"]
    raw = raw_samples()
    expected = {}
    for (kind, _), (goal, answers, _) in raw.items():
        expected.setdefault(f"{goal}.{kind}", []).append(1 / len(answers))
    assert ties["ties"] == len(raw)
    for key, credits in expected.items():
        section = ties["sections"][key]
        assert (section["samples"], section["ties"]) == (len(credits), len(credits))
        assert section["tie_adjusted"] == pytest.approx(sum(credits) / len(credits))
        if key.endswith("pairwise"):
            assert section["tie_adjusted"] == 0.5
    overall = sum(sum(c) / len(c) for c in expected.values()) / len(expected)
    assert ties["tie_adjusted"] == pytest.approx(overall)
    result.stdout.fnmatch_lines(["What this score means", f"Ties: {len(raw)} of {len(raw)} samples tie at the top*"])


def test_the_markdown_baseline_and_the_generators_recounted_from_the_files(pytester):
    run(pytester, "--rmb-model", "length", "--rmb-json", "s.json", "--rmb-jsonl", "s.jsonl")
    analysis = summary_of(pytester, "s.json")["analysis"]
    raw = raw_samples()
    right: dict[str, list[bool]] = {}
    for (kind, _), (goal, answers, _) in raw.items():
        counts = [sum(count_markdown_by_lines(a)[1:]) for a in answers]
        right.setdefault(f"{goal}.{kind}", []).append(all(counts[0] > c for c in counts[1:]))
    for key, outcomes in right.items():
        section = analysis["markdown_baseline"]["sections"][key]
        assert (section["correct"], section["total"]) == (sum(outcomes), len(outcomes))

    label_wins: dict[str, int] = {}
    model_wins: dict[str, int] = {}
    appearances: dict[str, int] = {}
    for (kind, _), (_, answers, names) in raw.items():
        if kind != "pairwise" or names[0] == names[1] or len(answers[0]) == len(answers[1]):
            continue  # one generator, or a tie of the length rule: no preference to count
        for name in names:
            appearances[name] = appearances.get(name, 0) + 1
        label_wins[names[0]] = label_wins.get(names[0], 0) + 1
        longer = names[0] if len(answers[0]) > len(answers[1]) else names[1]
        model_wins[longer] = model_wins.get(longer, 0) + 1
    rows = analysis["generators"]["generators"]
    assert set(rows) == set(appearances)
    for name, row in rows.items():
        assert row["samples"] == appearances[name]
        assert row["label_win_rate"] == pytest.approx(label_wins.get(name, 0) / appearances[name])
        assert row["model_win_rate"] == pytest.approx(model_wins.get(name, 0) / appearances[name])


def test_calibration_recomputed_from_the_answers_lengths(pytester):
    pytester.makepyfile(scaled=SCALED_LENGTH)
    result = run(pytester, "--rmb-model", "python:scaled:make", "--rmb-json", "s.json")
    calibration = summary_of(pytester, "s.json")["analysis"]["calibration"]
    margins = np.array([(len(answers[0]) - len(answers[1])) / 100
                        for (kind, _), (_, answers, _) in raw_samples().items() if kind == "pairwise"])
    p = 1 / (1 + np.exp(-margins))
    assert calibration["samples"] == len(margins)
    assert calibration["source"] == "sigmoid(margin)"
    assert calibration["brier"] == pytest.approx(float(np.mean((1 - p) ** 2)))
    confidence = np.maximum(p, 1 - p)
    right = p > 0.5
    ece = 0.0
    for low in np.arange(0.5, 1.0, 0.05):
        last = low + 0.05 >= 1.0 - 1e-12
        inside = (confidence >= low) & ((confidence <= 1.0) if last else (confidence < low + 0.05))
        if inside.any():
            ece += inside.mean() * abs(right[inside].mean() - confidence[inside].mean())
    assert calibration["ece"] == pytest.approx(ece)
    ordered = sorted(zip(np.abs(margins), right), key=lambda pair: pair[0])
    sizes = [len(part) for part in np.array_split(np.arange(len(ordered)), 10)]
    start = 0
    for decile, size in zip(calibration["deciles"], sizes):
        part = ordered[start:start + size]
        start += size
        assert decile["samples"] == size
        assert decile["accuracy"] == pytest.approx(sum(r for _, r in part) / size)
        assert (decile["smallest"], decile["largest"]) == pytest.approx((part[0][0], part[-1][0]))
    result.stdout.fnmatch_lines([f"Calibration of sigmoid(margin) on {len(margins)} pairs: Brier "
                                 f"{calibration['brier']:.4f}, ECE {calibration['ece']:.4f}*"])


def test_the_style_line_says_what_the_summary_says(pytester):
    result = run(pytester, "--rmb-model", "length", "--rmb-json", "s.json")
    analysis = summary_of(pytester, "s.json")["analysis"]
    style = analysis["style"]
    share = style["style_share"]
    assert share is not None and not math.isnan(share)
    text = " ".join(line.strip() for line in result.stdout.lines)
    assert (f"Style: more markdown wins on {analysis['markdown_baseline']['overall']:.4f} (overall); style explains "
            f"{share:.0%} of the model's agreement with the labels ({style['accuracy']:.4f} on {style['pairs']} "
            f"pairs, {style['style_controlled_accuracy']:.4f} with style held equal)") in text
