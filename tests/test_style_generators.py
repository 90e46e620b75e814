"""Style beside skill and generators: every figure recomputed here from the raw answers, by code
written apart from pytest_rmb.style and pytest_rmb.generators."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from pytest_rmb.generators import bradley_terry, generator_stats, kendall_tau_b, spearman
from pytest_rmb.style import MIN_PAIRS, markdown_correct, style_counts, style_decomposition
from tests.helpers import SHARED_DATA


def count_markdown_by_lines(text: str) -> list[int]:
    """Headings, list items, bold spans and fenced blocks, read line by line."""
    headings = items = fences = 0
    for line in text.split("\n"):
        stripped = line.lstrip(" ")
        if len(line) - len(stripped) <= 3 and stripped.startswith("#"):
            hashes = len(stripped) - len(stripped.lstrip("#"))
            headings += hashes <= 6 and stripped[hashes:hashes + 1] in (" ", "\t", "")
        body = line.lstrip(" \t")
        marker = body.split(" ")[0].split("\t")[0]
        rest = body[len(marker):]
        is_number = marker[:-1].isdigit() and marker[-1:] in (".", ")")
        items += (marker in ("-", "*", "+") or is_number) and rest[:1] in (" ", "\t") and rest.strip() != ""
        fences += body.startswith("```")
    bold = 0
    for line in text.split("\n"):
        # A span: two delimiter characters, then text without that character, then two again.
        i = 0
        while i < len(line):
            mark = line[i:i + 2]
            if mark in ("**", "__"):
                close = line.find(mark[0], i + 2)
                if close > i + 2 and line[close:close + 2] == mark:
                    bold += 1
                    i = close + 2
                    continue
            i += 1
    return [len(text), headings, items, bold, fences // 2]


ANSWERS = [
    "Plain text with no markdown at all.",
    "# Title\n\nSome **bold** words and __more__.\n\n- one\n- two\n* three\n+ four\n",
    "1. first\n2) second\n10. tenth\n\n```python\nprint(1)\n```\n",
    "## Two\n### Three\n####### seven is no heading\n#nospace\n   # indented three\n    # four spaces",
    "-not an item\n- \n-  spaced item\n**unclosed bold\n**a** and **b**",
]


@pytest.mark.parametrize("text", ANSWERS)
def test_style_counts_agree_with_a_line_by_line_count(text):
    assert list(style_counts(text)) == count_markdown_by_lines(text)


def style_fields(texts):
    counts = [style_counts(text) for text in texts]
    return {"style": counts, "markdown_correct": markdown_correct(counts)}


def test_the_markdown_baseline_is_strict_more_markdown_wins():
    plain, rich = ANSWERS[0], ANSWERS[1]
    assert style_fields([rich, plain])["markdown_correct"] is True
    assert style_fields([plain, rich])["markdown_correct"] is False
    assert style_fields([plain, plain])["markdown_correct"] is False  # a tie is wrong
    # Best-of-N: the best must have more than every other.
    assert style_fields([rich, plain, ANSWERS[2]])["markdown_correct"] is True
    assert style_fields([ANSWERS[2], plain, rich])["markdown_correct"] is False


def test_the_markdown_baseline_on_rmb_helpfulness_pairs(real_pairs):
    """The figures the module docstring quotes, recounted here."""
    differ = more_wins = longer_wins = 0
    for chosen, rejected, _, _ in real_pairs["helpfulness"]:
        a, b = sum(count_markdown_by_lines(chosen)[1:]), sum(count_markdown_by_lines(rejected)[1:])
        if a != b:
            differ += 1
            more_wins += a > b
            longer_wins += len(chosen) > len(rejected)
    assert (differ, len(real_pairs["helpfulness"])) == (5713, 8456)
    assert round(100 * more_wins / differ, 1) == 70.1
    assert round(100 * longer_wins / differ, 1) == 67.1


@pytest.fixture(scope="module")
def real_pairs():
    """RMB's pairwise samples by goal: (chosen, rejected, chosen's generator, rejected's)."""
    import json

    if not SHARED_DATA.is_dir():
        pytest.skip(f"RMB data not found at {SHARED_DATA}")
    pairs = {"helpfulness": [], "harmlessness": []}
    for path in sorted((SHARED_DATA / "Pairwise_set").glob("*/*/*.json")):
        goal = path.parent.parent.name.lower()
        for item in json.loads(path.read_text()):
            pairs[goal].append((item["chosen"]["answer"], item["reject"]["answer"],
                                item["chosen"]["llm_name"], item["reject"]["llm_name"]))
    return pairs


def record(uid, chosen, rejected, scores, generators=("g1", "g2")):
    return {"scenario": "s", "kind": "pairwise", "uid": str(uid), "scores": list(scores),
            "generators": list(generators), **style_fields([chosen, rejected])}


def synthetic_pairs(count, seed=7):
    rng = random.Random(seed)
    pairs = []
    for i in range(count):
        def words(low, high):
            return " ".join("word" for _ in range(rng.randint(low, high)))

        # Chosen answers run longer, as RMB's do: a length rule agrees with the labels often.
        chosen = ("# Heading\n" if rng.random() < 0.5 else "") + words(20, 100)
        rejected = ("- item\n" * rng.randint(0, 3)) + words(5, 60)
        pairs.append((i, chosen, rejected))
    return pairs


def test_a_model_that_prefers_the_longer_answer_is_explained_by_style():
    rng = random.Random(2)
    records = []
    for i, c, r in synthetic_pairs(3000):
        longer_first = len(c) > len(r)
        # Picks the longer answer 85% of the time, whichever the label says.
        first = longer_first if rng.random() < 0.85 else not longer_first
        records.append(record(i, c, r, [1, 0] if first else [0, 1]))
    result = style_decomposition(records)
    assert result["pairs"] == len(records)
    assert result["accuracy"] == sum(x["scores"][0] == 1 for x in records) / len(records)
    assert result["accuracy"] > 0.6
    # With length held equal, a length rule has no preference left: a coin flip.
    assert result["style_controlled_accuracy"] == pytest.approx(0.5, abs=0.04)
    assert result["style_share"] == pytest.approx(1.0, abs=0.15)
    assert result["weights"]["length"] > 0


def test_a_model_blind_to_style_keeps_its_accuracy_when_style_is_controlled():
    rng = random.Random(3)
    records = []
    for i, c, r in synthetic_pairs(2000):
        right = rng.random() < 0.8  # agrees with the label 80% of the time, whatever the style
        records.append(record(i, c, r, [1, 0] if right else [0, 1]))
    result = style_decomposition(records)
    accuracy = sum(x["scores"][0] == 1 for x in records) / len(records)
    assert result["accuracy"] == accuracy
    assert result["style_controlled_accuracy"] == pytest.approx(accuracy, abs=0.03)
    assert result["style_share"] == pytest.approx(0.0, abs=0.1)


def test_the_fit_maximises_the_likelihood():
    """At the fitted weights the log-likelihood's gradient is zero: checked here numerically, by
    moving each weight a little either way."""
    records = [record(i, c, r, [len(c) + 30 * (i % 3), len(r)]) for i, c, r in synthetic_pairs(300)]
    result = style_decomposition(records)
    assert result is not None and 0.5 < result["style_controlled_accuracy"] < 1
    from pytest_rmb import style

    rows, outcomes = [], []
    for x in records:
        if x["scores"][0] == x["scores"][1]:
            continue
        side = style._side(x)
        first, second = (x["style"][0], x["style"][1]) if side == 1 else (x["style"][1], x["style"][0])
        rows.append([side] + [0.0 if a + b == 0 else (a - b) / (a + b) for a, b in zip(first, second)])
        outcomes.append(1.0 if (x["scores"][0] > x["scores"][1]) == (side == 1) else 0.0)
    columns = list(zip(*rows))
    kept = [0] + [j for j in range(1, 6) if len(set(columns[j])) > 1]

    def scaled(j, value):
        if j == 0:
            return value
        mean = sum(columns[j]) / len(columns[j])
        sd = math.sqrt(sum((v - mean) ** 2 for v in columns[j]) / len(columns[j]))
        return value / sd

    names = ["label", "length", "headings", "list_items", "bold", "code_blocks"]
    logit_label = math.log(result["style_controlled_accuracy"] / (1 - result["style_controlled_accuracy"]))
    weights = [logit_label] + [result["weights"][names[j]] for j in kept[1:]]

    def log_likelihood(w):
        total = 0.0
        for row, y in zip(rows, outcomes):
            z = sum(wj * scaled(j, row[j]) for wj, j in zip(w, kept))
            total += y * z - math.log1p(math.exp(z))
        return total

    best = log_likelihood(weights)
    for k in range(len(weights)):
        for step in (-1e-3, 1e-3):
            moved = list(weights)
            moved[k] += step
            assert log_likelihood(moved) <= best + 1e-9


def test_too_few_pairs_give_no_decomposition():
    records = [record(i, c, r, [len(c), len(r)]) for i, c, r in synthetic_pairs(MIN_PAIRS + 5)]
    tied = [dict(x, scores=[1, 1]) for x in records[:6]]
    assert style_decomposition(records[: MIN_PAIRS - 1]) is None
    # Ties are no preference: 6 tied + (MIN_PAIRS - 1) - 6 preferring ones is too few.
    assert style_decomposition(tied + records[6: MIN_PAIRS - 1]) is None
    assert style_decomposition(records[:MIN_PAIRS]) is not None


def test_a_judge_flip_or_split_is_no_preference():
    from pytest_rmb.preferences import CHOSEN, REJECTED, preferred

    def judged(won, **detail):
        return {"kind": "pairwise", "verdicts": [{"won": won, "error": None, "detail": detail}]}

    assert preferred(judged(True, orders=[{"verdict": "A"}, {"verdict": "B"}])) == CHOSEN
    assert preferred(judged(False, orders=[{"verdict": "B"}])) == REJECTED
    assert preferred(judged(False, flip=True, orders=[{"verdict": "A"}, {"verdict": "A"}])) is None
    assert preferred(judged(False, orders=[{"verdict": None}])) is None
    assert preferred(judged(None)) is None
    assert preferred({"kind": "pairwise", "verdicts": [{"won": False, "error": "HTTP 500"}]}) is None
    assert preferred({"kind": "bon", "scores": [2, 1, 0]}) is None
    assert preferred({"kind": "pairwise", "scores": [0.5, 0.5]}) is None
    assert preferred({"kind": "pairwise", "scores": [0.4, 0.5]}) == REJECTED


# -- generators -----------------------------------------------------------------------------------


def test_spearman_and_kendall_by_hand():
    a, b = [1, 2, 3, 4], [1, 3, 2, 4]
    # Ranks differ by 1 on two items: 1 - 6 * 2 / (4 * 15) = 0.8; pairs: 5 concordant, 1 discordant.
    assert spearman(a, b) == pytest.approx(0.8)
    assert kendall_tau_b(a, b) == pytest.approx(4 / 6)
    # A tie in b: pairs (1,2) tied in b only; 4 concordant, 1 discordant... counted here by hand.
    c = [1, 1, 2, 3]
    concordant = sum(1 for i, j in itertools.combinations(range(4), 2) if (a[i] - a[j]) * (c[i] - c[j]) > 0)
    discordant = sum(1 for i, j in itertools.combinations(range(4), 2) if (a[i] - a[j]) * (c[i] - c[j]) < 0)
    assert kendall_tau_b(a, c) == pytest.approx((concordant - discordant) / math.sqrt(6 * 5))
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_bradley_terry_is_the_fixed_point_of_its_likelihood():
    wins = {("a", "b"): 7, ("b", "a"): 3, ("b", "c"): 6, ("c", "b"): 2, ("a", "c"): 5}
    strength = bradley_terry(["a", "b", "c"], wins)
    p = {n: math.exp(s) for n, s in strength.items()}
    # Score equations with the prior (one win and one loss against strength 1): expected wins = wins.
    for name in p:
        won = sum(t for (w, _), t in wins.items() if w == name) + 1
        expected = sum(t * p[name] / (p[name] + p[other]) for (w, loser), t in wins.items()
                       for other in [loser if w == name else w] if name in (w, loser))
        expected += 2 * p[name] / (p[name] + 1)
        assert expected == pytest.approx(won, rel=1e-6)
    assert strength["a"] > strength["b"] > strength["c"]


def test_generator_win_rates_and_a_favoured_generator():
    rng = random.Random(11)
    names = ["alpha", "beta", "gamma", "delta"]
    records = []
    for i in range(1200):
        chosen, rejected = rng.sample(names, 2)
        # The model agrees with the labels, except that it always picks gamma's answer.
        picks_chosen = rejected != "gamma"
        records.append({"scenario": "s", "kind": "pairwise", "uid": str(i), "generators": [chosen, rejected],
                        "scores": [1, 0] if picks_chosen else [0, 1]})
    records.append({"scenario": "s", "kind": "pairwise", "uid": "same", "generators": ["alpha", "alpha"],
                    "scores": [1, 0]})
    result = generator_stats(records)
    assert result["samples"] == 1200  # the same-generator pair is left out
    for name in names:
        mine = [r for r in records[:1200] if name in r["generators"]]
        label = sum(r["generators"][0] == name for r in mine) / len(mine)
        model = sum((r["generators"][0] == name) == (r["scores"][0] == 1) for r in mine) / len(mine)
        row = result["generators"][name]
        assert (row["samples"], row["label_win_rate"], row["model_win_rate"]) == (len(mine), label, model)
    assert [n for n in names if result["generators"][n]["favoured"]] == ["gamma"]
    assert result["spearman"] is not None and result["spearman"] < 1


def test_a_model_that_agrees_with_the_labels_favours_nobody():
    rng = random.Random(5)
    names = ["alpha", "beta", "gamma"]
    records = [{"scenario": "s", "kind": "pairwise", "uid": str(i), "generators": rng.sample(names, 2),
                "scores": [1, 0]} for i in range(300)]
    result = generator_stats(records)
    assert not any(row["favoured"] for row in result["generators"].values())
    assert result["spearman"] == pytest.approx(1.0)
    assert result["kendall"] == pytest.approx(1.0)
    assert generator_stats(records[:9]) is None


def test_the_regression_recovers_known_weights():
    """Preferences drawn in the test from a logistic model with known weights on the standardised
    style differences: the fit finds them again."""
    rng = np.random.default_rng(4)
    count = 20000
    truth = {"length": 0.8, "headings": 0.0, "list_items": 0.5, "bold": -0.4, "code_blocks": 0.0}
    label_weight = 0.6
    chosen = np.column_stack([rng.integers(50, 3000, count), rng.integers(0, 4, count), rng.integers(0, 12, count),
                              rng.integers(0, 6, count), rng.integers(0, 2, count)])
    rejected = np.column_stack([rng.integers(50, 3000, count), rng.integers(0, 4, count), rng.integers(0, 12, count),
                                rng.integers(0, 6, count), rng.integers(0, 2, count)])
    total = chosen + rejected
    difference = np.where(total > 0, (chosen - rejected) / np.maximum(total, 1), 0.0)
    # Chosen and rejected come from one distribution, so each difference has mean 0 and its spread
    # is its root mean square, whichever answer is shown first.
    standardised = difference / np.sqrt((difference ** 2).mean(axis=0))
    logit = label_weight + standardised @ np.array(list(truth.values()))
    prefers_chosen = rng.random(count) < 1 / (1 + np.exp(-logit))
    records = [{"scenario": "s", "kind": "pairwise", "uid": str(i), "scores": [1, 0] if prefers_chosen[i] else [0, 1],
                "style": [chosen[i].tolist(), rejected[i].tolist()]} for i in range(count)]
    result = style_decomposition(records)
    for name, weight in truth.items():
        assert result["weights"][name] == pytest.approx(weight, abs=0.06), name
    assert result["style_controlled_accuracy"] == pytest.approx(1 / (1 + math.exp(-label_weight)), abs=0.015)


def test_a_coin_flipping_model_favours_nobody_though_weak_generators_gain():
    """Against the labels alone, a coin gives the weakest generator's answers far more wins; against
    what a model of its accuracy would give them, nothing."""
    rng = random.Random(9)
    names = ["strong", "middle", "weak"]
    records = []
    for i in range(3000):
        first, second = rng.sample(names, 2)
        chosen, rejected = sorted((first, second), key=names.index) if rng.random() < 0.85 else (first, second)
        records.append({"scenario": "s", "kind": "pairwise", "uid": str(i), "generators": [chosen, rejected],
                        "scores": [1, 0] if rng.random() < 0.5 else [0, 1]})
    result = generator_stats(records)
    weak = result["generators"]["weak"]
    assert weak["model_win_rate"] - weak["label_win_rate"] > 0.2
    assert abs(weak["model_win_rate"] - weak["expected_win_rate"]) < 0.05
    assert not any(row["favoured"] for row in result["generators"].values())
