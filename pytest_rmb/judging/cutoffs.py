"""Replies cut off before their verdict: how to tell one, and when a run should stop for them.

A judge that thinks writes its reasoning before its verdict. A reply limit too small for that ends
the reply mid-thought: the server says ``finish_reason: "length"``, or its reasoning field is full
and the answer empty (a local judge: the reply hit ``max_new_tokens`` without an end-of-sequence
token). Such a reply has no verdict because the judge was not let finish, not because it could not
decide: it is a "cut off" miss, counted apart from "no verdict", and never a judged loss.

When many of the first replies are cut off, the limit is wrong for this judge and the rest of the
run would pay for replies that say nothing: :class:`CutOffWatch` stops the run early, naming the
setting to raise. What was received is kept (the engine caches it), so the rerun resumes.
"""

from __future__ import annotations

from pytest_rmb.judging.parsing import is_empty
from pytest_rmb.models import RunStopped

# A vote's note starts with this when its last reply was cut off (the note goes on with an excerpt).
CUT_OFF = "cut off"
# The early stop: this many cut-offs among the first EARLY_REPLIES replies of a process. Two in five
# is far more than a judge whose limit fits ever has (a rare rambling reply), and 50 replies are few
# enough that a misconfigured run stops after minutes, not after its budget.
EARLY_REPLIES = 50
EARLY_CUT_OFFS = 20


def is_cut_off(finish_reason: object, content: str | None, reasoning: str | None = None) -> bool:
    """Whether a reply ended at the token limit: ``finish_reason`` "length", or an empty answer after
    reasoning (a server's reasoning parser puts an unfinished thought in its reasoning field).

    A reply that wrote nothing at all is an empty reply whatever its finish_reason: it says nothing
    about the limit (greedy decoding of special tokens only, a passing fault) and is asked again."""
    wrote = not is_empty(content) or not is_empty(reasoning)
    return wrote and (finish_reason == "length" or is_empty(content))


class JudgeCutOff(RunStopped):
    """Too many of the first replies were cut off at the reply limit: the run stops early."""


class CutOffWatch:
    """Counts the cut-offs among a process's first :data:`EARLY_REPLIES` replies and says, once,
    when they reach :data:`EARLY_CUT_OFFS`.

    ``limit`` names the setting as the user gives it (``max_tokens=1024``); ``remedy`` says what to
    set instead."""

    def __init__(self, limit: str, remedy: str):
        self.limit = limit
        self.remedy = remedy
        self.replies = 0
        self.cut_offs = 0
        self._fired = False

    def see(self, cut_off: bool) -> JudgeCutOff | None:
        """Count one reply; the stop to raise when this reply makes the count reach the threshold."""
        if self.replies >= EARLY_REPLIES:
            return None
        self.replies += 1
        self.cut_offs += bool(cut_off)
        if self.cut_offs >= EARLY_CUT_OFFS and not self._fired:
            self._fired = True
            return JudgeCutOff(
                f"{self.cut_offs} of the judge's first {self.replies} replies were cut off at {self.limit} "
                f"before their verdict (a judge that reasons needs more room); {self.remedy}. Every verdict "
                "received is cached: the rerun asks only for the rest")
        return None
