"""Listwise judging: the judge sees every answer of a list at once and names the best.

A Best-of-N list of N answers is one request per order instead of N-1 comparisons; a pair is a
list of two. The answers are shown under the letters A, B, C, ... between the same markers as
pair-v2 (``[The Start of Assistant C's Answer]`` ... ``[The End of Assistant C's Answer]``), and
the judge closes with the best one's letter in the chosen verdict format (``[[C]]``, ``\\boxed{C}``,
...). The parsing rules are the pairwise ones (:func:`~pytest_rmb.judging.parsing.find_verdict`
with the list's letters): the last verdict wins, two letters or a tie is no verdict, a letter
outside the list is no verdict, ``<think>`` is masked.

A list is won when every order asked picks the best answer by a strict majority of its votes; two
orders that pick different answers are a flip (lost, counted apart); an order without a verdict
makes the list "no verdict". The :class:`~pytest_rmb.models.Verdict` keeps the pairwise
``detail`` shape (``orders``, ``flip``, ``usage``, ...) so the judge statistics read it as they
read a comparison, and adds where each order showed the answers (``shown``) and which it picked
(``picked``: 0 the best, i the i-th loser).
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_rmb.judging.cutoffs import CUT_OFF
from pytest_rmb.judging.formats import VerdictFormat
from pytest_rmb.judging.orders import summed_usage
from pytest_rmb.judging.parsing import EMPTY_REPLY
from pytest_rmb.judging.prompts import _FACTORS, _FAIRNESS, _VERDICT_AFTER, neutralise, render_question
from pytest_rmb.models import Verdict

LETTERS = tuple(string.ascii_uppercase)
# Bumped whenever what a listwise judge sees changes: hashed into its prompt's identity (the cache).
LIST_RENDER_VERSION = "1"

_OPENING = ("Please act as an impartial judge and evaluate the quality of the responses provided by {count} AI "
            "assistants to the user question displayed below. You should choose the one assistant that follows "
            "the user's instructions and answers the user's question best.")
_OPENING_MULTI = ("Please act as an impartial judge and evaluate the quality of the responses provided by {count} "
                  "AI assistants to the final user question of the conversation displayed below; the earlier turns "
                  "are the context every assistant saw. You should choose the one assistant that follows the "
                  "user's instructions and answers the user's final question best.")
_EXPLAIN = "Begin your evaluation by comparing the {count} responses and provide a short explanation."
_ANSWER = "[The Start of Assistant {letter}'s Answer]\n{answer}\n[The End of Assistant {letter}'s Answer]"
# pair-v2's markers name Assistant A and B only (and stay as they are, so that pairwise prompts keep
# their identity); a list's answers may plant the markers of any letter.
_LIST_MARKER = re.compile(r"\[(\s*The (?:Start|End) of Assistant [A-Z]'s Answer\s*)\]", re.IGNORECASE)
_FOLLOW_UP = ("Your reply did not end with a verdict in the required format. Output your final verdict now, "
              "only the best assistant's letter as {choices}.")


class ListTooLong(ValueError):
    """A list with more answers than there are letters to show them under."""


def list_slots(count: int) -> tuple[str, ...]:
    """The letters a list of ``count`` answers is shown under: A, B, ... (2 to 26)."""
    if not 2 <= count <= len(LETTERS):
        raise ListTooLong(f"a listwise judge shows 2 to {len(LETTERS)} answers, this list has {count}")
    return LETTERS[:count]


def choices(fmt: VerdictFormat, count: int) -> str:
    """``"[[A]]" if assistant A is best, ..., "[[E]]" if assistant E is best`` in the format."""
    quote = "'" if '"' in fmt.written else '"'
    return ", ".join(f"{quote}{fmt.of(letter)}{quote} if assistant {letter} is best" for letter in list_slots(count))


def defuse(text: str, fmt: VerdictFormat) -> str:
    """``text`` with verdicts, pair-v2's markers and every letter's answer markers defused, same length."""
    return _LIST_MARKER.sub(lambda m: "(" + m.group(1) + ")", neutralise(text, fmt))


def list_system(count: int, fmt: VerdictFormat, multi_turn: bool = False) -> str:
    opening = (_OPENING_MULTI if multi_turn else _OPENING).format(count=count)
    return " ".join((opening, _FACTORS, _EXPLAIN.format(count=count), _FAIRNESS,
                     _VERDICT_AFTER + choices(fmt, count) + "."))


def list_messages(conversation: Sequence[Any], shown: Sequence[str], fmt: VerdictFormat) -> list[dict[str, str]]:
    """The chat messages asking the judge for the best of ``shown`` (in that order, as A, B, ...)."""
    question = _LIST_MARKER.sub(lambda m: "(" + m.group(1) + ")", render_question(conversation, fmt)[0])
    answers = "\n\n".join(_ANSWER.format(letter=letter, answer=defuse(answer, fmt))
                          for letter, answer in zip(list_slots(len(shown)), shown))
    return [{"role": "system", "content": list_system(len(shown), fmt, len(conversation) > 1)},
            {"role": "user", "content": f"[User Question]\n{question}\n\n{answers}"}]


def list_follow_up(messages: Sequence[Mapping[str, str]], reply: str, fmt: VerdictFormat,
                   count: int) -> list[dict[str, str]]:
    """The conversation asked again after a reply without a usable verdict, in the format."""
    quote = "'" if '"' in fmt.written else '"'
    named = [f"{quote}{fmt.of(letter)}{quote}" for letter in list_slots(count)]
    return [*map(dict, messages), {"role": "assistant", "content": reply},
            {"role": "user", "content": _FOLLOW_UP.format(choices=", ".join(named[:-1]) + " or " + named[-1])}]


def list_prompt_sha256(fmt: VerdictFormat) -> str:
    """The identity of what a listwise judge is asked (every list size), for the cache fingerprint."""
    parts = [LIST_RENDER_VERSION, list_system(3, fmt), list_system(3, fmt, True), _ANSWER, _FOLLOW_UP, fmt.name]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ListOrder:
    """What the judge said about a list shown in one order.

    ``shown``: the answers' indices in the order shown (0 the best): ``shown[i]`` is under letter i.
    ``votes``: each sample's letter after its follow-up turns, None without one. ``notes``: why
    votes failed, as :class:`~pytest_rmb.judging.orders.OrderResult` keeps them (:data:`EMPTY_REPLY`
    exactly for a reply that stayed empty, a note starting with :data:`CUT_OFF` for one cut off).
    """

    shown: tuple[int, ...]
    votes: tuple[str | None, ...]
    usage: Mapping[str, int] = field(default_factory=dict)
    parse_retries: int = 0
    notes: tuple[str, ...] = ()
    rescued: int = 0

    @property
    def best_letter(self) -> str:
        """The letter the best answer was shown under."""
        return LETTERS[self.shown.index(0)]

    @property
    def cut_off_votes(self) -> int:
        return sum(note.startswith(CUT_OFF) for note in self.notes)

    @property
    def empty_votes(self) -> int:
        return sum(note == EMPTY_REPLY for note in self.notes)

    def majority(self, empty_as: str | None = None) -> tuple[bool, str | None]:
        """(any vote parsed, the letter a strict majority of all votes named or None); the votes
        whose reply stayed empty counted as ``empty_as`` when given."""
        counts: dict[str, int] = {}
        for vote in self.votes:
            if vote is not None:
                counts[vote] = counts.get(vote, 0) + 1
        if empty_as is not None and self.empty_votes:
            counts[empty_as] = counts.get(empty_as, 0) + self.empty_votes
        for letter, count in counts.items():
            if 2 * count > len(self.votes):
                return True, letter
        return bool(counts), None

    def picked(self) -> int | None:
        """The index (0 the best) of the answer the order's majority named; None without one."""
        letter = self.majority()[1]
        return None if letter is None else self.shown[LETTERS.index(letter)]

    def settled(self) -> bool:
        """Whether the majority holds whatever the votes whose reply stayed empty would have named
        (all of them for any one letter, or none: every mix lies between those)."""
        if not self.empty_votes:
            return True
        now = self.majority()
        return all(self.majority(empty_as=letter) == now for letter in LETTERS[:len(self.shown)])


def _name(index: int | None) -> str:
    return "nothing" if index is None else "the best" if index == 0 else f"loser {index}"


def combine_list(orders: Sequence[ListOrder], order: str) -> Verdict:
    """One list's :class:`Verdict` (``won``: the best answer was picked in every order)."""
    if not orders:
        raise ValueError("combine_list needs at least one order's result")
    usage = summed_usage([r.usage for r in orders])
    entries = []
    picks = []
    parsed = []
    for result in orders:
        any_vote, letter = result.majority()
        pick = result.picked()
        parsed.append(any_vote)
        picks.append(pick)
        entry: dict[str, Any] = {"chosen": result.best_letter, "verdict": letter, "votes": list(result.votes),
                                 "shown": list(result.shown), "picked": pick}
        if result.notes:
            entry["notes"] = list(result.notes)
        entries.append(entry)
    flip = None not in picks and len(set(picks)) > 1
    empty = sum(r.empty_votes for r in orders)
    cut_offs = sum(r.cut_off_votes for r in orders)
    detail: dict[str, Any] = {
        "order": order, "listwise": True, "answers": len(orders[0].shown), "orders": entries, "flip": flip,
        "usage": usage, "parse_retries": sum(r.parse_retries for r in orders),
        "parse_failures": sum(v is None for r in orders for v in r.votes) - empty - cut_offs,
    }
    if empty:
        detail["empty_replies"] = empty
    if cut_offs:
        detail["cut_offs"] = cut_offs
    rescued = sum(r.rescued for r in orders)
    if rescued:
        detail["cut_offs_rescued"] = rescued
    unsettled = [r.best_letter for r in orders if not r.settled()]
    settled_miss = any(not any_vote and r.settled() for r, any_vote in zip(orders, parsed))
    if unsettled and not settled_miss:
        where = " and ".join(f"best as {letter}" for letter in unsettled)
        return Verdict(None, None, f"{EMPTY_REPLY} ({where})", detail=detail, ask_again=True)
    missing = [r for r, any_vote in zip(orders, parsed) if not any_vote]
    if missing:
        where = " and ".join(f"best as {r.best_letter}" for r in missing)
        if any(r.cut_off_votes for r in missing):
            detail["cut_off"] = True
            return Verdict(None, None, f"{CUT_OFF} at the reply limit ({where})", detail=detail)
        return Verdict(None, None, f"no verdict ({where})", detail=detail)
    if flip:
        said = ", ".join(f"best as {r.best_letter}: picked {_name(p)}" for r, p in zip(orders, picks))
        return Verdict(False, None, f"flip: the pick follows the answer order ({said})", detail=detail)
    if all(p == 0 for p in picks):
        return Verdict(True, None, "", detail=detail)
    split = [r.best_letter for r, p in zip(orders, picks) if p is None]
    if split:
        where = " and ".join(f"best as {letter}" for letter in split)
        return Verdict(False, None, f"no majority of the votes for any answer ({where})", detail=detail)
    return Verdict(False, None, f"the judge picked {_name(picks[0])}", detail=detail)
