"""Style beside skill: how much of a model's agreement with RMB's labels its taste for style explains.

Two figures, both from the per-sample records:

- **The markdown baseline** (``markdown_correct`` on each record, beside the length baseline's
  ``null_correct``): the answer with more markdown elements wins, under RMB's strict rule (a tie is
  wrong). Markdown elements: headings (``#`` lines), list items (``-``, ``*``, ``+`` or ``1.`` /
  ``1)`` lines), bold spans (``**x**`` or ``__x__``) and fenced code blocks (pairs of ```` ``` ````
  lines). On RMB's helpfulness pairs whose answers differ in markdown (5,713 of 8,456 in the 95 of
  98 files we have), more markdown is right on 70.1% of them, longer on 67.1%.
- **The style decomposition** of the model's own preferences, the way arena leaderboards control
  for style: a logistic regression, over the pairwise samples where the model preferred one answer,
  of "the model preferred answer 1" on whether answer 1 is the labelled one (+1/-1) and the
  differences in style between the two answers (length, headings, list items, bold, code blocks;
  each a normalised difference (a - b) / (a + b), 0 when both are 0, then scaled to unit variance).
  Which answer is "1" is decided per sample by a hash of its id, so that the fit has no side to
  lean on. ``style_controlled_accuracy`` is the fitted chance that the model prefers the labelled
  answer when the two answers do not differ in style; ``style_share`` is the part of the model's
  agreement with the labels beyond a coin flip that style explains: 1 - (style-controlled accuracy
  - 0.5) / (accuracy - 0.5), where accuracy is the share of these pairs on which the model
  preferred the labelled answer (0: style explains none of it; 1: all; above 1: with style held
  equal the model would prefer the wrong answer; none unless accuracy is above 0.5 by more than two
  standard errors of a coin flip's share).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from pytest_rmb.metrics import is_correct
from pytest_rmb.preferences import CHOSEN, preferred

STYLE_FEATURES = ("length", "headings", "list_items", "bold", "code_blocks")

# Each pattern starts at a newline (the text is read with one put before it): a literal first
# character lets the regex engine skip ahead, several times faster than a multi-line ``^``.
# A heading may be empty ("#" alone); a list item needs text after its marker on the same line.
_HEADING = re.compile(r"\n {0,3}#{1,6}(?=[ \t\n])")
_LIST_ITEM = re.compile(r"\n[ \t]*(?:[-*+]|\d+[.)])[ \t]+\S")
_BOLD = re.compile(r"\*\*[^*\n]+?\*\*|__[^_\n]+?__")
# The same where the text holds one of the two markers only: a literal start scans faster.
_BOLD_STARS = re.compile(r"\*\*[^*\n]+?\*\*")
_BOLD_UNDERSCORES = re.compile(r"__[^_\n]+?__")
_FENCE = re.compile(r"\n[ \t]*```")

# Fewer usable pairs than this and the fit says little: no decomposition.
MIN_PAIRS = 30


# An answer of RMB appears in a pairwise sample and in Best-of-N lists (41,586 answers, 17,811
# distinct texts): each text is read once, and its counts are one tuple shared by every record.
# The quick membership tests skip most scans.
@functools.lru_cache(maxsize=65536)
def style_counts(text: str) -> tuple[int, int, int, int, int]:
    """The answer's length in characters and its markdown elements, in ``STYLE_FEATURES`` order."""
    lines = "\n" + text
    return (len(text),
            len(_HEADING.findall(lines + "\n")) if "#" in text else 0,
            len(_LIST_ITEM.findall(lines)),
            _bold(text),
            len(_FENCE.findall(lines)) // 2 if "```" in text else 0)


def _bold(text: str) -> int:
    stars, underscores = "**" in text, "__" in text
    if stars and underscores:
        return len(_BOLD.findall(text))
    if stars:
        return len(_BOLD_STARS.findall(text))
    return len(_BOLD_UNDERSCORES.findall(text)) if underscores else 0


def markdown_elements(counts: Sequence[int]) -> int:
    """Every markdown element of :func:`style_counts` (all but the length)."""
    return counts[1] + counts[2] + counts[3] + counts[4]


def markdown_correct(counts: Sequence[Sequence[int]]) -> bool:
    """The markdown baseline's outcome on a sample, from its answers' counts (chosen or best first)."""
    return is_correct([markdown_elements(c) for c in counts])


def _side(record: Mapping[str, Any]) -> int:
    """+1: answer 1 is the chosen one; -1: the rejected one. Fixed per sample."""
    key = f"{record['scenario']}/{record['kind']}/{record['uid']}".encode()
    return 1 if hashlib.sha256(key).digest()[0] % 2 == 0 else -1


def _beats_coin(accuracy: float, pairs: int) -> bool:
    """Above a coin flip by more than two standard errors of a coin's share over ``pairs``: below
    that, the share of a difference that is mostly noise would be noise too."""
    return accuracy - 0.5 > 2 * 0.5 / pairs ** 0.5


def _fit_logistic(x: np.ndarray, y: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Maximum-likelihood weights of a logistic regression without intercept (Newton's method; a
    faint ridge keeps a separable column finite)."""
    weights = np.zeros(x.shape[1])
    ridge = 1e-6 * np.eye(x.shape[1])
    for _ in range(iterations):
        p = 0.5 * (1.0 + np.tanh(0.5 * (x @ weights)))  # the logistic function, without overflow
        gradient = x.T @ (y - p) - ridge @ weights
        hessian = (x * (p * (1 - p))[:, None]).T @ x + ridge
        step = np.linalg.solve(hessian, gradient)
        weights += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return weights


def style_decomposition(records: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The style decomposition of the model's preferences (module docstring); None when fewer than
    ``MIN_PAIRS`` pairwise records carry both a preference and style counts."""
    sides: list[int] = []
    chose_chosen: list[bool] = []
    pairs: list[Sequence[Sequence[int]]] = []
    for record in records:
        choice = preferred(record)
        counts = record.get("style")
        if choice is None or not counts:
            continue
        sides.append(_side(record))
        chose_chosen.append(choice == CHOSEN)
        pairs.append(counts[:2])
    if len(pairs) < MIN_PAIRS:
        return None
    side = np.array(sides, dtype=float)
    counts_of = np.array(pairs, dtype=float)  # samples x (chosen, rejected) x features
    first = np.where(side[:, None] == 1, counts_of[:, 0], counts_of[:, 1])
    second = np.where(side[:, None] == 1, counts_of[:, 1], counts_of[:, 0])
    total = first + second
    differences = np.divide(first - second, total, out=np.zeros_like(total), where=total != 0)
    table = np.concatenate([side[:, None], differences], axis=1)
    # The model preferred answer 1 when it preferred the chosen one and answer 1 is the chosen one,
    # or it preferred the rejected one and answer 1 is the rejected one.
    chosen = np.array(chose_chosen)
    y = (chosen == (side == 1)).astype(float)
    agreed = int(chosen.sum())
    scale = table[:, 1:].std(axis=0)
    # A style that never differs here explains nothing: its column is left out of the fit.
    varying = scale > 0
    label = table[:, :1]
    with_style = np.concatenate([label, table[:, 1:][:, varying] / scale[varying]], axis=1)
    full = _fit_logistic(with_style, y)
    weights = dict.fromkeys(STYLE_FEATURES, 0.0)
    kept = [name for name, keep in zip(STYLE_FEATURES, varying) if keep]
    for name, weight in zip(kept, full[1:]):
        weights[name] = round(float(weight), 6)
    accuracy = agreed / len(pairs)
    controlled = float(0.5 * (1.0 + np.tanh(0.5 * full[0])))
    return {
        "pairs": len(pairs),
        "accuracy": accuracy,
        "style_controlled_accuracy": controlled,
        # Of the model's agreement with the labels beyond a coin flip, the part that goes once the
        # answers' style is held equal; nothing to explain unless the model clearly beats a coin flip.
        "style_share": 1.0 - (controlled - 0.5) / (accuracy - 0.5) if _beats_coin(accuracy, len(pairs)) else None,
        "weights": weights,
    }
