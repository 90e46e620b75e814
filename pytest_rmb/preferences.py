"""Which answer of a pairwise sample the model preferred, read from a per-sample record.

The style and generator analyses ask "what does the model prefer, and why", which the correct/miss
bit alone cannot say for a judge: a flip or a missing verdict is no preference at all. This module
is the one place that turns a record (JSONL-shaped, as :mod:`pytest_rmb.outcomes` writes it) into
a preference, for every kind of model:

- scores (pointwise): the higher-scored answer; equal scores are no preference;
- verdicts (pairwise): the winner of the sample's one comparison; a flip (the verdict followed the
  answer order), a split of the votes, no verdict or a failed request is no preference.

Only pairwise samples: a Best-of-N record's verdicts say how the best fared against each other
answer only until the first loss, so its full order is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_rmb.data import PAIRWISE

CHOSEN = 0
REJECTED = 1


def preferred(record: Mapping[str, Any]) -> int | None:
    """``CHOSEN`` or ``REJECTED`` for a pairwise record with a preference; None otherwise."""
    if record.get("kind") != PAIRWISE:
        return None
    scores = record.get("scores")
    if scores is not None:
        if len(scores) != 2 or scores[0] == scores[1]:
            return None
        return CHOSEN if scores[0] > scores[1] else REJECTED
    verdicts = record.get("verdicts") or []
    if len(verdicts) != 1 or verdicts[0] is None:
        return None
    verdict = verdicts[0]
    detail = verdict.get("detail") or {}
    if verdict.get("error") or verdict.get("won") is None or detail.get("flip"):
        return None
    # A judge's loss where an order had no majority of its votes is a split, not a preference.
    if any(entry.get("verdict") is None for entry in detail.get("orders") or []):
        return None
    return CHOSEN if verdict["won"] else REJECTED
