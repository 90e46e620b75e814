"""Generators: whose answers win, under RMB's labels and under the model.

Every RMB answer names the model that wrote it (``llm_name``); each pairwise record carries the
two names (``generators``, chosen first). Over the pairwise samples whose two answers come from
different generators and where the model preferred one answer (:mod:`pytest_rmb.preferences`):

- each generator's win rate under the labels and under the model (wins / such samples it is in);
- a Bradley-Terry strength of each generator under each (the log of its strength, fitted by the
  minorise-maximise iteration with one win and one loss against an opponent of strength 1 added to
  every generator, so that one that never loses stays finite, and 0 is that opponent), and the
  Spearman and Kendall (tau-b) correlations between the two rankings;
- a flag where the model favours one generator's answers beyond what its accuracy explains. A model
  that agrees with the labels on a share ``a`` of the samples, its mistakes falling anywhere, would
  give a generator's answer the win with chance ``a`` where the labels do and ``1 - a`` where they
  do not; the generator is ``favoured`` when its answers win under the model significantly more
  often than that (a normal test of the sum of those chances, Holm-corrected over the generators,
  at 0.05) and by at least ``FAVOUR_GAP`` of its samples: far more, not just more (an answer
  reused across samples makes them less independent than the test assumes). (Against the labels
  alone, any model nearer a coin flip would seem to favour the weak generators.) A reward model trained on one
  family's answers, or a judge from that family, shows up here (self-preference).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from pytest_rmb.preferences import CHOSEN, preferred
from pytest_rmb.stats import adjust_p_values

FAVOUR_GAP = 0.10
ALPHA = 0.05
MIN_SAMPLES = 10


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    array = np.asarray(values, dtype=float)
    order = np.argsort(array, kind="stable")
    ranks = np.empty(len(array))
    ranks[order] = np.arange(1, len(array) + 1)
    for value in np.unique(array):
        tied = array == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's of the average ranks); None without variation."""
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b (ties in either ranking accounted for); None without variation."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + ties_a) * (concordant + discordant + ties_b)) ** 0.5
    return (concordant - discordant) / denominator if denominator else None


def bradley_terry(names: Sequence[str], wins: Mapping[tuple[str, str], int],
                  iterations: int = 1000) -> dict[str, float]:
    """Log strengths from ``wins[(winner, loser)]`` counts, on the scale the prior's opponent sets
    (strength 1, log 0): the prior makes the fit unique, so no other normalisation."""
    index = {name: i for i, name in enumerate(names)}
    count = len(names)
    won = np.zeros((count, count))
    for (winner, loser), times in wins.items():
        won[index[winner], index[loser]] += times
    games = won + won.T
    strength = np.ones(count)
    for _ in range(iterations):
        # One win and one loss against an opponent of strength 1 (the prior), then the MM update.
        total_wins = won.sum(axis=1) + 1
        denominator = (games / (strength[:, None] + strength[None, :])).sum(axis=1) + 2 / (strength + 1)
        updated = total_wins / denominator
        if np.max(np.abs(updated - strength)) < 1e-12:
            strength = updated
            break
        strength = updated
    logs = np.log(strength)
    return {name: float(logs[index[name]]) for name in names}


def _above_p(observed: float, expected: float, variance: float) -> float:
    """One-sided p-value of ``observed`` wins or more, by the normal approximation of their sum."""
    if variance <= 0:
        return 1.0 if observed <= expected else 0.0
    return 0.5 * math.erfc((observed - expected) / math.sqrt(2 * variance))


def generator_stats(records: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The generators analysis (module docstring); None with fewer than ``MIN_SAMPLES`` usable samples."""
    samples = []
    for record in records:
        names = record.get("generators")
        choice = preferred(record)
        if choice is None or not names or len(names) != 2 or not all(names) or names[0] == names[1]:
            continue
        samples.append((names[0], names[1], choice == CHOSEN))
    if len(samples) < MIN_SAMPLES:
        return None
    appearances: Counter[str] = Counter()
    label_wins: Counter[str] = Counter()
    model_wins: Counter[str] = Counter()
    label_games: dict[tuple[str, str], int] = defaultdict(int)
    model_games: dict[tuple[str, str], int] = defaultdict(int)
    # The generator's wins expected of a model as accurate as this one, mistakes falling anywhere,
    # and their variance: each sample adds a's chance where the labels side with it, else 1 - a's.
    agreement = sum(1 for *_, right in samples if right) / len(samples)
    expected: dict[str, float] = defaultdict(float)
    variance: dict[str, float] = defaultdict(float)
    for chosen, rejected, model_chose_chosen in samples:
        appearances[chosen] += 1
        appearances[rejected] += 1
        label_wins[chosen] += 1
        label_games[(chosen, rejected)] += 1
        winner, loser = (chosen, rejected) if model_chose_chosen else (rejected, chosen)
        model_wins[winner] += 1
        model_games[(winner, loser)] += 1
        for name, chance in ((chosen, agreement), (rejected, 1 - agreement)):
            expected[name] += chance
            variance[name] += chance * (1 - chance)
    names = sorted(appearances)
    label_strength = bradley_terry(names, label_games)
    model_strength = bradley_terry(names, model_games)
    p_values = adjust_p_values([_above_p(model_wins[n], expected[n], variance[n]) for n in names], "holm")
    rows = {}
    for name, p in zip(names, p_values):
        label_rate = label_wins[name] / appearances[name]
        model_rate = model_wins[name] / appearances[name]
        rows[name] = {
            "samples": appearances[name],
            "label_win_rate": label_rate,
            "model_win_rate": model_rate,
            "expected_win_rate": expected[name] / appearances[name],
            "label_strength": round(label_strength[name], 6),
            "model_strength": round(model_strength[name], 6),
            "favoured": bool(p < ALPHA and model_wins[name] - expected[name] >= FAVOUR_GAP * appearances[name]),
            "p_favoured": p,
        }
    labels = [label_strength[n] for n in names]
    model = [model_strength[n] for n in names]
    return {"samples": len(samples), "generators": rows, "spearman": spearman(labels, model),
            "kendall": kendall_tau_b(labels, model), "correction": "holm"}
