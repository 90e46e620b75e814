"""The answer orders a comparison is asked in, and their results combined into one verdict.

A comparison is won only when the chosen answer is preferred in every order asked; a disagreement
between orders is a flip (lost, counted apart); an order without a verdict makes the comparison "no
verdict". Failed requests never reach here: they are errors, not verdicts.

A vote whose reply stayed empty (after the backend asked again) is unknown rather than a failed
vote: when what it might have said could change the comparison's verdict, the comparison is an
"empty reply" miss that the next run asks again (:attr:`Verdict.ask_again`, never cached). When the
other votes or orders settle the verdict whatever it might have said, the verdict stands.

A vote whose reply was cut off at the reply limit (:mod:`pytest_rmb.judging.cutoffs`) gave no
verdict; a comparison that misses for it is "cut off", not "no verdict", and says so in its detail
(``cut_off: true``), with the votes cut off and those a follow-up turn rescued.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_rmb.judging.cutoffs import CUT_OFF
from pytest_rmb.judging.parsing import EMPTY_REPLY
from pytest_rmb.judging.prompts import SLOTS
from pytest_rmb.models import Verdict

ORDERS = ("both", "random", "fixed")


def chosen_slots(order: str, seed: int, key: str) -> tuple[str, ...]:
    """Where the chosen answer is shown in each order asked: ``both`` -> ("A", "B"); ``fixed`` ->
    ("A",); ``random`` -> one slot from a hash of the seed and ``key`` (the comparison's identity),
    so reruns, other models and other processes put it in the same place."""
    if order == "both":
        return SLOTS
    if order == "fixed":
        return ("A",)
    if order == "random":
        digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
        return (SLOTS[digest[0] & 1],)
    raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")


def other_slot(slot: str) -> str:
    return "B" if slot == "A" else "A"


@dataclass(frozen=True)
class OrderResult:
    """What the judge said in one answer order.

    ``chosen_slot``: where the chosen (first) answer was shown. ``votes``: each sample's verdict
    letter after its parse retries, None when it gave none. ``p_a``: P("A") from logprobs or
    logits (mean over the votes that had it), None when unknown. ``notes``: why votes failed
    (reason and a short excerpt of the reply), one per failed vote, for the JSONL; a vote whose
    reply stayed empty has the note :data:`EMPTY_REPLY` exactly, one whose last reply was cut off a
    note starting with :data:`CUT_OFF`. ``usage``: tokens this order cost. ``rescued``: votes whose
    reply was cut off and whose follow-up turn then gave a verdict.
    """

    chosen_slot: str
    votes: tuple[str | None, ...]
    p_a: float | None = None
    usage: Mapping[str, int] = field(default_factory=dict)
    parse_retries: int = 0
    notes: tuple[str, ...] = ()
    rescued: int = 0

    @property
    def cut_off_votes(self) -> int:
        """Votes without a verdict because their last reply was cut off at the reply limit."""
        return sum(note.startswith(CUT_OFF) for note in self.notes)

    @property
    def empty_votes(self) -> int:
        """Votes whose reply stayed empty: what they would have said is unknown."""
        return sum(note == EMPTY_REPLY for note in self.notes)

    def outcome(self) -> tuple[bool | None, str | None]:
        """(chosen preferred?, the order's majority letter); (None, None) when no vote parsed.

        A strict majority of all votes decides for the chosen answer; failed votes and ties count
        against it."""
        return self._outcome()

    def settled(self) -> bool:
        """Whether :meth:`outcome` holds whatever the votes whose reply stayed empty would have
        said: for the chosen answer, against it, or nothing usable. (Any mix of those lies
        between the three, so checking them is enough.)"""
        empty = self.empty_votes
        if not empty:
            return True
        outcome = self._outcome()
        return (self._outcome(empty_as=self.chosen_slot) == outcome
                and self._outcome(empty_as=other_slot(self.chosen_slot)) == outcome)

    def _outcome(self, empty_as: str | None = None) -> tuple[bool | None, str | None]:
        """:meth:`outcome`, with the empty votes counted as ``empty_as`` when given."""
        other = other_slot(self.chosen_slot)
        extra = self.empty_votes if empty_as is not None else 0
        chosen = sum(v == self.chosen_slot for v in self.votes) + (extra if empty_as == self.chosen_slot else 0)
        against = sum(v == other for v in self.votes) + (extra if empty_as == other else 0)
        if not chosen and not against:
            return None, None
        if 2 * chosen > len(self.votes):
            return True, self.chosen_slot
        if 2 * against > len(self.votes):
            return False, other
        # No strict majority for either letter (ties, failed votes): a loss, but no letter the
        # judge gave, so never part of an order flip.
        return False, None


def summed_usage(usages: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The tokens of several orders' replies summed; reasoning tokens only when every order's
    server said them: a partial sum would pass for the whole."""
    names = ["prompt_tokens", "completion_tokens"]
    if all("reasoning_tokens" in usage for usage in usages):
        names.append("reasoning_tokens")
    return {name: sum(int(usage.get(name, 0) or 0) for usage in usages) for name in names}


def combine(order_results: Sequence[OrderResult], order: str) -> Verdict:
    """One comparison's :class:`Verdict` (``first`` = the chosen answer) from its orders."""
    if not order_results:
        raise ValueError("combine needs at least one order's result")
    usage = summed_usage([r.usage for r in order_results])
    orders = []
    outcomes = []
    letters = []
    p_chosen = []
    for result in order_results:
        won, letter = result.outcome()
        outcomes.append(won)
        letters.append(letter)
        entry: dict[str, Any] = {"chosen": result.chosen_slot, "verdict": letter, "votes": list(result.votes)}
        if result.p_a is not None:
            p = result.p_a if result.chosen_slot == "A" else 1.0 - result.p_a
            entry["p_chosen"] = round(p, 6)
            p_chosen.append(p)
        if result.notes:
            entry["notes"] = list(result.notes)
        orders.append(entry)
    flip = None not in letters and len(set(outcomes)) > 1
    empty = sum(r.empty_votes for r in order_results)
    detail: dict[str, Any] = {
        "order": order,
        "orders": orders,
        "flip": flip,
        "usage": usage,
        "parse_retries": sum(r.parse_retries for r in order_results),
        # Votes the judge answered without a usable verdict: not those whose reply stayed empty or was cut off.
        "parse_failures": (sum(v is None for r in order_results for v in r.votes) - empty
                           - sum(r.cut_off_votes for r in order_results)),
    }
    if empty:
        detail["empty_replies"] = empty
    cut_offs = sum(r.cut_off_votes for r in order_results)
    if cut_offs:
        detail["cut_offs"] = cut_offs
    rescued = sum(r.rescued for r in order_results)
    if rescued:
        detail["cut_offs_rescued"] = rescued
    p_first = sum(p_chosen) / len(p_chosen) if p_chosen else None
    unsettled = [r.chosen_slot for r in order_results if not r.settled()]
    # An order without a verdict that no empty reply could change makes the comparison "no
    # verdict" whatever the unsettled orders would say; otherwise an unsettled order leaves it open.
    settled_miss = any(won is None and r.settled() for r, won in zip(order_results, outcomes))
    if unsettled and not settled_miss:
        where = " and ".join(f"chosen as {slot}" for slot in unsettled)
        return Verdict(None, p_first, f"{EMPTY_REPLY} ({where})", detail=detail, ask_again=True)
    if None in outcomes:
        missing = [r for r, won in zip(order_results, outcomes) if won is None]
        where = " and ".join(f"chosen as {r.chosen_slot}" for r in missing)
        if any(r.cut_off_votes for r in missing):
            # The judge was stopped before its verdict: not a judge that could not decide.
            detail["cut_off"] = True
            return Verdict(None, p_first, f"{CUT_OFF} at the reply limit ({where})", detail=detail)
        return Verdict(None, p_first, f"no verdict ({where})", detail=detail)
    if flip:
        said = ", ".join(f"chosen as {r.chosen_slot}: {'won' if won else 'lost'}"
                         for r, won in zip(order_results, outcomes))
        return Verdict(False, p_first, f"flip: the verdict follows the answer order ({said})", detail=detail)
    if all(outcomes):
        return Verdict(True, p_first, "", detail=detail)
    split = [r.chosen_slot for r, letter in zip(order_results, letters) if letter is None]
    if split:
        where = " and ".join(f"chosen as {slot}" for slot in split)
        return Verdict(False, p_first, f"no majority of the votes for either answer ({where})", detail=detail)
    return Verdict(False, p_first, "the judge preferred the other answer", detail=detail)


def list_orders(order: str, seed: int, key: str, count: int) -> tuple[tuple[int, ...], ...]:
    """The orders a listwise judge is shown a list of ``count`` answers in: each order is the
    answers' indices (0 the best) in the order shown, one per letter. ``fixed`` -> the list as it
    is, the best first; ``both`` -> that and its reverse (the best first, then last: for a pair,
    exactly the two orders of a comparison); ``random`` -> one permutation shuffled by a generator
    seeded from the seed and ``key`` (the list's identity), so reruns and other processes agree."""
    identity = tuple(range(count))
    if order == "fixed":
        return (identity,)
    if order == "both":
        return (identity, identity[::-1])
    if order == "random":
        digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
        shown = list(identity)
        random.Random(int.from_bytes(digest[:8], "big")).shuffle(shown)
        return (tuple(shown),)
    raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
