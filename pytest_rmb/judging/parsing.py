"""What a judge's reply says: the verdict letter, why there is none, P("A") from logprobs.

``<think>`` blocks are masked first; the verdict is the last one in the reply's verdict format
(``[[A]]``/``[[B]]`` by default, :mod:`pytest_rmb.judging.formats`); a final verdict line that
names both, or ends in a tie, is no verdict. There is no fallback to the reply's first character
and no default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_rmb.judging.formats import SLOTS, TAGS, VerdictFormat, classify, letters_named, verdict_format

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
# Why a reply with no content (or only whitespace) gives no verdict. Also the whole note of such a
# vote (:func:`miss_note` has nothing to quote), which is how a combined verdict tells a vote whose
# reply stayed empty from one that said something else.
EMPTY_REPLY = "empty reply"


@dataclass(frozen=True)
class ParsedVerdict:
    verdict: str | None
    reason: str
    # Offset of the verdict letter in the reply (for reading its logprob); -1 without a verdict.
    position: int = -1


def _mask_thinking(text: str) -> str:
    """Reasoning replaced by spaces, offsets kept: closed blocks, an unclosed one to the end, and
    everything before a stray closing tag (templates that open ``<think>`` in the prompt)."""
    blank = _THINK_BLOCK.sub(lambda m: " " * len(m.group()), text)
    stray = list(_THINK_CLOSE.finditer(blank))
    if stray:
        end = stray[-1].end()
        blank = " " * end + blank[end:]
    opened = _THINK_OPEN.search(blank)
    if opened:
        blank = blank[:opened.start()] + " " * (len(blank) - opened.start())
    return blank


def has_thinking(text: str | None) -> bool:
    """Whether a reply carries its reasoning inline: a ``<think>`` block, or a stray ``</think>``
    (a template that opened the block in the prompt)."""
    return bool(text) and (_THINK_OPEN.search(text or "") or _THINK_CLOSE.search(text or "")) is not None


def is_empty(reply: str | None) -> bool:
    """No content, or only whitespace: the judge said nothing at all (a passing server fault more
    often than an answer), which is asked again rather than parsed."""
    return not reply or not reply.strip()


def find_verdict(text: str, verdict: str | VerdictFormat = TAGS, slots: Sequence[str] = SLOTS) -> ParsedVerdict:
    """:func:`parse_verdict` with the verdict letter's offset in ``text``. ``slots``: the letters
    the answers were shown under (a listwise judge's list of N: the first N letters); a letter
    outside them is no verdict."""
    fmt = verdict_format(verdict)
    if is_empty(text):
        return ParsedVerdict(None, EMPTY_REPLY)
    visible = _mask_thinking(text)
    if not visible.strip():
        inside = fmt.pattern.search(text) is not None
        return ParsedVerdict(None, "verdict only inside <think>" if inside else "reply is all <think>")
    found = []
    for match in fmt.pattern.finditer(visible):
        said = classify(match.group(1), slots)
        if said is not None:
            found.append((match, said))
    if not found:
        return ParsedVerdict(None, f"no {letters_named(fmt, slots)} in the reply")
    last_match, last = found[-1]
    if last == "?":
        return ParsedVerdict(None, f"final verdict {last_match.group(0)!r} names no single answer")
    # The final verdict is the line of the last verdict: naming both answers there is ambiguous.
    line_start = visible.rfind("\n", 0, last_match.start()) + 1
    on_line = {said for match, said in found if match.start() >= line_start}
    if on_line != {last}:
        if len(slots) > 2:
            return ParsedVerdict(None, "final verdict line names more than one answer: "
                                 + ", ".join(fmt.of(s) for s in sorted(on_line)))
        return ParsedVerdict(None, f"final verdict names both {fmt.of('A')} and {fmt.of('B')}")
    # The verdict may be written [[a]] or [[ b ]]: find the letter in it as written.
    letter = last_match.start(1) + last_match.group(1).upper().index(last)
    return ParsedVerdict(last, "", letter)


def parse_verdict(text: str, verdict: str | VerdictFormat = TAGS) -> tuple[str | None, str]:
    """("A" | "B" | None, reason): the judge's verdict in the format ``verdict`` (default
    ``tags``: ``[[A]]``), or None with why there is none."""
    parsed = find_verdict(text, verdict)
    return parsed.verdict, parsed.reason


# A reply without a usable verdict is asked again as a follow-up turn (asking the identical request
# again at temperature 0 would mostly repeat the same reply). The local judge and a served one use
# the same turn, so that the same model asked both ways is asked the same thing.
_FOLLOW_UP = ("Your reply did not end with a verdict in the required format. Output your final verdict now, "
              "only {choices}.")


def follow_up_text(verdict: str | VerdictFormat = TAGS) -> str:
    """The follow-up turn asking for the verdict in the format ``verdict``."""
    choices = verdict_format(verdict).choices.replace(", ", " or ", 1)
    return _FOLLOW_UP.format(choices=choices)


FOLLOW_UP = follow_up_text(TAGS)
# How much of a reply without a verdict a miss's note quotes.
NOTE_CHARS = 160


def miss_note(reason: str, reply: str) -> str:
    """Why a reply gave no verdict, with the start of the reply (whitespace collapsed)."""
    excerpt = " ".join(reply.split())[:NOTE_CHARS]
    return f"{reason}: {excerpt!r}" if excerpt else reason


def follow_up(messages: Sequence[Mapping[str, str]], reply: str,
              verdict: str | VerdictFormat = TAGS) -> list[dict[str, str]]:
    """The conversation asked again: the judge's reply without a verdict, then the follow-up turn
    (:func:`follow_up_text`; :data:`FOLLOW_UP` for the default format)."""
    return [*map(dict, messages), {"role": "assistant", "content": reply},
            {"role": "user", "content": follow_up_text(verdict)}]


def verdict_probability(tokens: Sequence[Mapping[str, Any]], reply: str, position: int) -> float | None:
    """P("A") against "B" at the verdict letter, from OpenAI-style ``logprobs.content``.

    ``tokens`` are ``{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}`` covering
    ``reply`` in order; ``position`` is the letter's offset (:func:`find_verdict`). The letter may
    sit inside a larger token (``[[A``): alternatives count for the letter they have at the same
    place. A letter missing from the top alternatives counts as probability 0. None when the
    tokens do not line up with the reply or the letter is not found.
    """
    if position < 0 or not tokens:
        return None
    offset = 0
    for token in tokens:
        piece = token.get("token")
        if not isinstance(piece, str):
            return None
        if offset <= position < offset + len(piece):
            inner = position - offset
            head = piece[:inner]
            mass = {"A": 0.0, "B": 0.0}
            candidates = list(token.get("top_logprobs") or [])
            if not any(c.get("token") == piece for c in candidates):
                candidates.append({"token": piece, "logprob": token.get("logprob")})
            for candidate in candidates:
                text, logprob = candidate.get("token"), candidate.get("logprob")
                if not isinstance(text, str) or not isinstance(logprob, (int, float)):
                    continue
                # [[a]] is a verdict as [[A]] is: either case counts for its letter.
                if len(text) > inner and text[:inner] == head and text[inner].upper() in mass:
                    mass[text[inner].upper()] += math.exp(logprob)
            total = mass["A"] + mass["B"]
            return mass["A"] / total if total > 0 else None
        offset += len(piece)
    return None
