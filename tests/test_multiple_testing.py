"""compare's p-values and their corrections for testing many rows at once, against hand computations
and against independent formulations of the same procedures."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction
from statistics import NormalDist

import pytest

from pytest_rmb.stats import adjust_p_values, overall_p, sign_test_p

# Ties (two 0.04) and a step where the raw products are not monotone: Holm's fifth product, 2 * 0.04
# = 0.08, sits below the fourth's 0.12; BH's fifth, 6/5 * 0.04 = 0.048, below the fourth's 0.06.
P_VALUES = [0.01, 0.04, 0.03, 0.04, 0.005, 0.5]


def test_holm_by_hand_with_ties_and_the_monotone_step():
    # Sorted: 0.005, 0.01, 0.03, 0.04, 0.04, 0.5 times 6, 5, 4, 3, 2, 1:
    # 0.03, 0.05, 0.12, 0.12, 0.08 -> 0.12 (never below the one before), 0.5.
    assert adjust_p_values(P_VALUES, "holm") == pytest.approx([0.05, 0.12, 0.12, 0.12, 0.03, 0.5], abs=1e-15)


def test_benjamini_hochberg_by_hand_with_ties_and_the_monotone_step():
    # Sorted times 6/k: 0.03, 0.03, 0.06, 0.06, 0.048, 0.5; from the top, never above the one after:
    # 0.5, 0.048, 0.048, 0.048, 0.03, 0.03.
    assert adjust_p_values(P_VALUES, "bh") == pytest.approx([0.03, 0.048, 0.048, 0.048, 0.03, 0.5], abs=1e-15)


def test_no_correction_and_the_cap_at_one():
    assert adjust_p_values(P_VALUES, "none") == P_VALUES
    # 3 * 0.6 and 2 * 0.7 are over 1: every adjusted value is capped.
    assert adjust_p_values([0.6, 0.9, 0.7], "holm") == [1.0, 1.0, 1.0]
    assert adjust_p_values([0.6, 0.9, 0.7], "bh") == pytest.approx([0.9, 0.9, 0.9])
    assert adjust_p_values([], "holm") == adjust_p_values([], "bh") == []
    with pytest.raises(ValueError, match="unknown correction 'bonferroni': choose from holm, bh, none"):
        adjust_p_values([0.1], "bonferroni")


def holm_by_closed_testing(p_values):
    """Holm is the closed test of Bonferroni's: a row's adjusted p is the largest, over every subset
    of rows that holds it, of that subset's Bonferroni p (its size times its smallest p, at most 1)."""
    rows = range(len(p_values))
    return [
        max(min(1.0, len(subset) * min(p_values[j] for j in subset))
            for size in range(1, len(p_values) + 1)
            for subset in itertools.combinations(rows, size) if i in subset)
        for i in rows
    ]


def bh_by_ranks(p_values):
    """BH as the smallest, over the p-values at least as large as a row's, of m * p / (how many
    p-values are at most p): ties share the larger rank."""
    m = len(p_values)
    return [min(min(1.0, m * q / sum(1 for r in p_values if r <= q)) for q in p_values if q >= p) for p in p_values]


@pytest.mark.parametrize("seed", range(20))
def test_the_corrections_agree_with_their_independent_definitions(seed):
    rng = random.Random(seed)
    # Drawn on a coarse grid, so that ties are common.
    p_values = [rng.choice([0.001, 0.004, 0.01, 0.02, 0.03, 0.2, 0.6, 1.0]) * rng.choice([1, 1, 0.5])
                for _ in range(rng.randint(1, 9))]
    assert adjust_p_values(p_values, "holm") == pytest.approx(holm_by_closed_testing(p_values), abs=1e-15)
    assert adjust_p_values(p_values, "bh") == pytest.approx(bh_by_ranks(p_values), abs=1e-15)


def test_the_sign_test_by_hand():
    # 2 lost, 15 gained: the 17 disagreements would split like a fair coin; P(at most 2 of 17) =
    # (1 + 17 + 136) / 2^17, doubled.
    assert sign_test_p(2, 15) == sign_test_p(15, 2) == 2 * 154 / 2**17
    assert sign_test_p(0, 0) == 1.0  # the runs never disagree
    assert sign_test_p(3, 3) == 1.0  # twice a tail holding more than half is capped
    assert sign_test_p(0, 5) == 2 / 32
    # Thousands of disagreements, exactly: the tail summed as fractions.
    tail = sum(Fraction(math.comb(3000, k), 2**3000) for k in range(1400 + 1))
    assert sign_test_p(1400, 1600) == float(2 * tail)


def test_the_overall_row_uses_the_normal_approximation_of_the_same_null():
    sections = [(200, 30, 45), (100, 10, 12), (150, 0, 0), (60, 9, 3)]  # (samples, lost, gained)
    delta = ((45 - 30) / 200 + (12 - 10) / 100 + 0 + (3 - 9) / 60) / 4
    sd = math.sqrt(75 / 200**2 + 22 / 100**2 + 0 + 12 / 60**2) / 4
    assert overall_p(sections) == pytest.approx(2 * NormalDist().cdf(-abs(delta) / sd), rel=1e-12)
    assert overall_p([(10, 0, 0), (5, 0, 0)]) == 1.0
