"""The statistics the commands that read several summaries share (compare, leaderboard, validity).

Significance of a difference between two runs (an exact sign test on paired outcomes, a normal
approximation for the overall row, a test from the intervals where runs are not paired), the
corrections for testing many rows at once, and the correlations of the validity command (Pearson,
Spearman with average ranks for ties, percentile bootstrap intervals). numpy only: no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_rmb.metrics import SECTION_NAMES, section_key, split_outcome_key

if TYPE_CHECKING:  # summary's analyses use these tests: a run-time import would go round in a circle
    from pytest_rmb.summary import ScenarioRef

# --correction's choices, as the output names them.
CORRECTIONS = {"holm": "Holm's correction", "bh": "Benjamini-Hochberg correction (false discovery rate)",
               "none": "no correction"}
# The normal quantile of a two-sided 95% interval: a half-width over it is a standard error.
Z95 = 1.959963984540054


def sign_test_p(lost: int, gained: int) -> float:
    """Two-sided exact sign test (McNemar's exact test) of a row's paired outcomes.

    Only the samples where the two runs disagree carry information; if neither run were better,
    each would go either way with probability 1/2, so the smaller of ``lost`` and ``gained`` would
    be Binomial(lost + gained, 1/2). The p-value is twice that lower tail, at most 1. Exact, so
    it stays honest in the far tail that a correction over many rows looks at."""
    disagree = lost + gained
    if disagree == 0:
        return 1.0
    term = tail = 1  # C(disagree, 0), then each next binomial coefficient from the one before
    for k in range(min(lost, gained)):
        term = term * (disagree - k) // (k + 1)
        tail += term
    return min(1.0, 2 * tail / 2 ** disagree)


def overall_p(sections: Sequence[tuple[int, int, int]]) -> float:
    """Two-sided p-value of the overall row, the mean of the sections' accuracies.

    ``sections`` holds (samples, lost, gained) per section. Under the same null as
    :func:`sign_test_p`, each disagreement adds +-1/n to its section's delta with equal chance, so
    the overall delta has mean 0 and variance sum(lost + gained) / n^2 over the sections, divided by
    the number of sections squared; with thousands of disagreements the normal approximation of
    that distribution is close, and its two tails give the p-value."""
    count = len(sections)
    delta = sum((gained - lost) / n for n, lost, gained in sections) / count
    variance = sum((lost + gained) / n**2 for n, lost, gained in sections) / count**2
    if variance == 0:
        return 1.0
    return math.erfc(abs(delta) / math.sqrt(2 * variance))


def unpaired_p(a: float, a_ci95: Sequence[float] | None, b: float, b_ci95: Sequence[float] | None) -> float | None:
    """Two-sided p-value of a - b for runs whose samples cannot be paired, from their 95% intervals.

    Each interval's half-width over 1.96 stands for its standard error; the two runs are taken as
    independent, so the difference's variance is the sum. None when either run has no interval."""
    if a_ci95 is None or b_ci95 is None:
        return None
    variance = sum(((hi - lo) / (2 * Z95)) ** 2 for lo, hi in (a_ci95, b_ci95))
    if variance == 0:
        return 1.0 if a == b else 0.0
    return math.erfc(abs(a - b) / math.sqrt(2 * variance))


def row_keys(keys: list[str], scenarios: Mapping[str, ScenarioRef]) -> dict[str, list[str]]:
    """The samples (outcome keys) behind each section, task and scenario row, under the table's names."""
    rows: dict[str, list[str]] = {}
    for key in keys:
        scenario_id, kind, _ = split_outcome_key(key)
        scenario = scenarios[scenario_id]
        section = section_key(scenario.goal, kind)
        # A scenario of neither RMB goal (a user's own set) counts in no section, as in summarize.
        if section in SECTION_NAMES:
            rows.setdefault(section, []).append(key)
        rows.setdefault(f"task:{scenario.task_id}.{kind}", []).append(key)
        rows.setdefault(f"scenario:{scenario_id}.{kind}", []).append(key)
    return rows


def row_tests(reference: Mapping[str, Any], other: Mapping[str, Any], shared: list[str],
              scenarios: Mapping[str, ScenarioRef]) -> dict[str, float]:
    """metric -> two-sided p-value of other against reference, for every row, on the shared samples."""
    counts = {}
    for metric, keys in row_keys(shared, scenarios).items():
        old, new = reference["outcomes"], other["outcomes"]
        lost = sum(1 for key in keys if old[key] and not new[key])
        gained = sum(1 for key in keys if new[key] and not old[key])
        counts[metric] = (len(keys), lost, gained)
    tests = {metric: sign_test_p(lost, gained) for metric, (_, lost, gained) in counts.items()}
    sections = [counts[section] for section in SECTION_NAMES if section in counts]
    if sections:
        tests["overall"] = overall_p(sections)
    return tests


def adjust_p_values(p_values: Sequence[float], correction: str) -> list[float]:
    """The p-values adjusted for being tested together, in the order given.

    ``holm``: Holm's step-down; the chance of even one false star stays under alpha, however the
    rows depend on each other (a section and its tasks share samples). ``bh``: Benjamini-Hochberg's
    step-up; the expected share of false stars among the stars stays under alpha (rows independent
    or positively dependent), so it keeps more stars. ``none``: unchanged."""
    if correction == "none":
        return list(p_values)
    count = len(p_values)
    order = sorted(range(count), key=lambda i: p_values[i])
    adjusted = [1.0] * count
    if correction == "holm":
        # The k-th smallest is multiplied by the number of hypotheses still standing; never below the
        # one before it, since the step-down stops at the first that fails.
        running = 0.0
        for rank, index in enumerate(order):
            running = max(running, min(1.0, (count - rank) * p_values[index]))
            adjusted[index] = running
    elif correction == "bh":
        # The k-th smallest is scaled by count / k; never above the one after it, since the step-up
        # accepts everything below the largest that passes.
        running = 1.0
        for rank in range(count - 1, -1, -1):
            index = order[rank]
            running = min(running, count * p_values[index] / (rank + 1))
            adjusted[index] = running
    else:
        raise ValueError(f"unknown correction {correction!r}: choose from {', '.join(CORRECTIONS)}")
    return adjusted


# --- correlations ---------------------------------------------------------------------------------


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson's r of each row of ``a`` with the same row of ``b``; NaN where a row is constant."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    scale = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > 0, (a * b).sum(axis=-1) / np.where(scale > 0, scale, 1), np.nan)


def _ranks_rows(values: np.ndarray) -> np.ndarray:
    """Average ranks (from 1) within each row: the values below, plus the middle of the tied block."""
    below = (values[..., None, :] < values[..., :, None]).sum(axis=-1)
    tied = (values[..., None, :] == values[..., :, None]).sum(axis=-1)
    return below + (tied + 1) / 2


def _defined(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None where either variable is constant (r is undefined there)."""
    return _defined(float(_pearson_rows(np.asarray(x, dtype=float), np.asarray(y, dtype=float))))


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, tied values sharing the mean of the ranks they span."""
    return [float(rank) for rank in _ranks_rows(np.asarray(values, dtype=float))]


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson's r of the average ranks (so ties are handled as usual)."""
    return pearson(average_ranks(x), average_ranks(y))


CORRELATIONS = ("pearson", "spearman")


def bootstrap_correlations(x: Sequence[float], y: Sequence[float], *, seed: int,
                           resamples: int = 2000) -> dict[str, list[float] | None]:
    """95% percentile bootstrap intervals of Pearson's r and Spearman's rho, resampling the pairs
    (the models) with replacement.

    A resample where a coefficient is undefined (a variable constant, as when one model is drawn
    every time) is left out of that coefficient's interval; None when no resample gives a value."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    pick = rng.integers(0, len(a), (resamples, len(a)))
    drawn = {"pearson": _pearson_rows(a[pick], b[pick]),
             "spearman": _pearson_rows(_ranks_rows(a[pick]), _ranks_rows(b[pick]))}
    intervals: dict[str, list[float] | None] = {}
    for name, values in drawn.items():
        values = values[~np.isnan(values)]
        intervals[name] = None if not len(values) else [float(v) for v in np.percentile(values, [2.5, 97.5])]
    return intervals
