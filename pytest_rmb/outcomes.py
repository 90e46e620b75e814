"""The outcome stage: a model's scores or verdicts for one sample -> the item's outcome.

Items, metrics and reports see only :class:`Outcome`: whether the sample is correct, its JSONL
record, the one-line account of a miss, and an error when there is no outcome to give. Which kind
of model produced it matters here and nowhere after.

- Scores (pointwise): correct iff the chosen/best response scores strictly above every other, and
  the model scored every answer (a rater's "no rating" is a miss, never a loss for the rival).
- Verdicts (pairwise): correct iff the chosen/best answer won every comparison. A comparison with
  no usable verdict counts against it (with its reason); a failed request is an error, never a loss.
  A listwise judge gives one verdict per sample, on the whole list: won iff the best was picked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_rmb.data import PAIRWISE, Sample
from pytest_rmb.metrics import is_correct, margin
from pytest_rmb.models import Verdict
from pytest_rmb.style import markdown_correct, style_counts


@dataclass(frozen=True)
class Outcome:
    correct: bool
    record: dict[str, Any]
    miss: str = ""
    error: str | None = None


def _base_record(sample: Sample, correct: bool) -> dict[str, Any]:
    # What the analyses after the run need of the texts, since records carry no texts: each answer's
    # style counts (its length first: the length baseline's outcome comes from them), the markdown
    # baseline's outcome, and the model that wrote each answer.
    counts = [style_counts(response.text) for response in sample.responses]
    return {"scenario": sample.scenario, "kind": sample.kind, "uid": sample.uid, "correct": correct,
            "null_correct": is_correct([c[0] for c in counts]), "style": counts,
            "markdown_correct": markdown_correct(counts),
            "generators": tuple([response.model for response in sample.responses])}


def outcome_from_scores(sample: Sample, scores: Sequence[float], no_score: float | None = None) -> Outcome:
    """Scores best/chosen first, then the others in upstream order. ``no_score``: the score the
    model gives an answer it could not score; any such answer makes the sample a miss."""
    scores = list(scores)
    unscored = [] if no_score is None else [i for i, s in enumerate(scores) if s == no_score]
    correct = not unscored and is_correct(scores)
    record = _base_record(sample, correct)
    record["scores"] = scores
    if unscored:
        return Outcome(False, record, describe_unscored(sample.kind, unscored, len(scores)))
    return Outcome(correct, record, "" if correct else describe_score_miss(sample.kind, scores))


def describe_unscored(kind: str, unscored: Sequence[int], count: int) -> str:
    """One line: which answers the model gave no score (positions as :func:`describe_score_miss`)."""
    names = [("chosen" if kind == PAIRWISE else "best") if i == 0
             else ("rejected" if kind == PAIRWISE else f"loser {i} of {count - 1}") for i in unscored]
    return f"no rating for {', '.join(names)}"


def describe_score_miss(kind: str, scores: Sequence[float]) -> str:
    """One line: the scores and the margin."""
    if kind == PAIRWISE:
        return f"chosen {scores[0]:.6g} <= rejected {scores[1]:.6g} (margin {margin(scores):.6g})"
    rivals = scores[1:]
    strongest = max(range(len(rivals)), key=rivals.__getitem__)
    return (
        f"best {scores[0]:.6g} <= loser {strongest + 1} of {len(rivals)} {rivals[strongest]:.6g} "
        f"(margin {margin(scores):.6g})"
    )


def outcome_from_verdicts(sample: Sample, verdicts: Sequence[Verdict | None]) -> Outcome:
    """One verdict per comparison of the chosen/best answer with each other answer, in order;
    None for a comparison skipped after an earlier one was lost (Best-of-N early stop)."""
    errors = [v.error for v in verdicts if v is not None and v.error]
    correct = bool(verdicts) and all(v is not None and v.error is None and v.won is True for v in verdicts)
    record = _base_record(sample, correct)
    record["verdicts"] = [None if v is None else v.as_json() for v in verdicts]
    probabilities = [v.p_first for v in verdicts if v is not None and v.p_first is not None]
    if probabilities and len(probabilities) == len(verdicts):
        # The chance the chosen/best answer wins all its comparisons, as the model sees it.
        product = 1.0
        for p in probabilities:
            product *= p
        record["p_chosen"] = product
    if errors:
        return Outcome(False, record, error=f"the model could not be asked: {errors[0]}")
    return Outcome(correct, record, "" if correct else describe_verdict_miss(sample.kind, verdicts))


def describe_verdict_miss(kind: str, verdicts: Sequence[Verdict | None]) -> str:
    for position, verdict in enumerate(verdicts):
        if verdict is None or verdict.won is True:
            continue
        why = "no verdict" if verdict.won is None else "judged worse"
        if verdict.reason:
            why = f"{why}: {verdict.reason}" if verdict.won is not None else verdict.reason
        if verdict.detail.get("listwise"):
            # One verdict on the whole list (a listwise judge): the best was not picked.
            chosen = "chosen" if kind == PAIRWISE else "best"
            return f"{chosen} not picked of {verdict.detail.get('answers')} answers ({why})"
        if kind == PAIRWISE:
            return f"chosen lost against rejected ({why})"
        return f"best lost against loser {position + 1} of {len(verdicts)} ({why})"
    return "no comparison was won"
