"""How a judge writes its verdict (``verdict=``): the format asked for, how it is found in a
reply, and how a look-alike planted in an answer is defused.

Each judge family trained or prompted its models to close with its own verdict line, and a
model answers best in the format it learned:

- ``tags``: ``[[A]]``, MT-Bench's pair-v2 (the default);
- ``answer-tags``: ``<answer>[[A]]</answer>``, RM-R1's reasoning reward models;
- ``result``: ``[RESULT] A``, Prometheus 2's relative grading;
- ``bold-result``: ``**Result:** A``, judges in the Atla Selene style;
- ``boxed``: ``\\boxed{A}``, models trained on maths answers;
- ``json``: ``{"winner": "A"}``, judges asked for structured output.

Only the format changes; every format follows the same rules: the last verdict in the reply
wins, a verdict that names both answers or a tie is no verdict, and the line of the final
verdict must name one answer only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SLOTS = ("A", "B")
# What inside a verdict means "neither answer": RMB has no ties, so these are no verdict.
TIE_WORDS = frozenset({"C", "TIE", "DRAW", "EQUAL", "BOTH", "NEITHER"})

# Verdict tags with anything short inside ([[A]], [[ B ]], [[C]], [[A/B]]). Defused in every
# format (it is the default and part of answer-tags), so a format change never changes how an
# answer holding one is shown.
TAG_LIKE = re.compile(r"\[\[(\s*[A-Za-z][^\[\]\n]{0,15}?\s*)\]\]")
# After a line marker ([RESULT], **Result:**): one word, or a word and a letter joined ("A or B",
# "A/B"), so that an explanation that follows on the same line is not read as part of the verdict.
_WORDS = (r"(?:(?:Response|Assistant|Answer)\s+)?[\"'(*]*"
          r"([A-Za-z]+(?:\s*(?:/|,|&|=|>|<|\bor\b|\band\b|\bvs\b\.?)\s*[A-Za-z]\b)?)")


def classify(inner: str, slots: Sequence[str] = SLOTS) -> str | None:
    """What the inside of a verdict says: one of ``slots`` (the answers' letters: "A", "B" for a
    pair, "A".."E" for a list of five), "?" (two answers, or a tie: no verdict), or None when it is
    no verdict at all (``[[citation needed]]``) and the parser looks further back."""
    inner = inner.strip().upper()
    if inner in slots:
        return inner
    letters = set(re.findall(r"\b[A-Z]\b", inner)) & set(slots)
    # A letter that names an answer is never a tie word ("C" is a tie to a pair, an answer to a list).
    tie = inner in TIE_WORDS and inner not in slots
    # A list's judge that names a letter past its answers said something, just nothing usable: no
    # verdict, not a cue to look further back. (A pair keeps its rule: only "C" is its tie.)
    outside = len(slots) > 2 and len(inner) == 1 and inner.isalpha()
    if tie or outside or len(letters) >= 2 or sum(s in inner for s in slots) >= 2 and len(inner) <= 5:
        return "?"
    return None


def letters_named(fmt: VerdictFormat, slots: Sequence[str] = SLOTS) -> str:
    """The verdicts a reply may give, for messages: "[[A]] or [[B]]", "[[A]] to [[E]]" for a list."""
    joiner = " or " if len(slots) == 2 else " to "
    return fmt.of(slots[0]) + joiner + fmt.of(slots[-1])


def _swap(opening: str, closing: str) -> Callable[[re.Match[str]], str]:
    """A defuser that replaces the match's first and last characters (same length)."""
    return lambda m: opening + m.group()[1:-1] + closing


def _unbox(match: re.Match[str]) -> str:
    r"""``\boxed{A}`` -> ``\boxed(A)``: its braces swapped for parentheses (same length)."""
    text = match.group()
    return text.replace("{", "(", 1)[:-1] + ")"


@dataclass(frozen=True)
class VerdictFormat:
    """One way of writing the verdict.

    ``written`` is the verdict for one answer with ``@`` for its letter (``[[@]]``), shown in the
    prompt's closing instruction and the follow-up turn. ``pattern`` finds verdicts in a reply,
    group 1 holding what :func:`classify` reads. ``marker`` finds what is defused in the answers
    and the question (``defuse`` rewrites one match, same length), on top of :data:`TAG_LIKE`.
    """

    name: str
    written: str
    pattern: re.Pattern[str]
    marker: re.Pattern[str]
    defuse: Callable[[re.Match[str]], str]

    def of(self, letter: str) -> str:
        """The verdict for ``letter`` as this format writes it."""
        return self.written.replace("@", letter)

    @property
    def prefix(self) -> str:
        """What the reply holds just before the letter (``[[``): where a verdict-first judge is
        read from its next-token logits."""
        return self.written.split("@")[0]

    @property
    def choices(self) -> str:
        """``"[[A]]" if assistant A is better, "[[B]]" if assistant B is better`` in this format
        (quoted with ``'`` when the format has ``"`` of its own)."""
        quote = "'" if '"' in self.written else '"'
        return (f"{quote}{self.of('A')}{quote} if assistant A is better, "
                f"{quote}{self.of('B')}{quote} if assistant B is better")

    def neutralise(self, text: str) -> str:
        """``text`` with verdict tags and this format's markers defused, same length."""
        text = TAG_LIKE.sub(lambda m: "[(" + m.group(1) + ")]", text)
        return text if self.marker is TAG_LIKE else self.marker.sub(self.defuse, text)


TAGS = VerdictFormat("tags", "[[@]]", TAG_LIKE, TAG_LIKE, _swap("[(", ")]"))

FORMATS: dict[str, VerdictFormat] = {fmt.name: fmt for fmt in (
    TAGS,
    # RM-R1 looks for the literal "<answer>[[A]]</answer>"; the opening tag is defused as well as
    # the [[...]] inside, so an answer can plant neither half.
    VerdictFormat("answer-tags", "<answer>[[@]]</answer>",
                  re.compile(r"<answer>\s*\[\[(\s*[A-Za-z][^\[\]\n]{0,15}?\s*)\]\]\s*</answer>", re.IGNORECASE),
                  re.compile(r"<answer>", re.IGNORECASE), _swap("(", ")")),
    VerdictFormat("result", "[RESULT] @", re.compile(r"\[RESULT\][ \t]*:?[ \t]*" + _WORDS, re.IGNORECASE),
                  re.compile(r"\[RESULT\]", re.IGNORECASE), _swap("(", ")")),
    VerdictFormat("bold-result", "**Result:** @",
                  re.compile(r"\*\*Result(?::\*\*|\*\*:)[ \t]*" + _WORDS, re.IGNORECASE),
                  re.compile(r"\*\*Result(?::\*\*|\*\*:)", re.IGNORECASE), _swap("(", ")")),
    VerdictFormat("boxed", "\\boxed{@}", re.compile(r"\\boxed\{\s*(?:\\text(?:bf)?\{)?([^{}\n]{1,16}?)\}"),
                  re.compile(r"\\boxed\{[^{}\n]{0,16}\}"), _unbox),
    VerdictFormat("json", '{"winner": "@"}', re.compile(r'"winner"\s*:\s*"([^"\n]{1,16})"', re.IGNORECASE),
                  re.compile(r'"winner"', re.IGNORECASE), _swap("'", "'")),
)}
VERDICT_FORMATS = tuple(FORMATS)


def verdict_format(name: str | VerdictFormat | None) -> VerdictFormat:
    """The format by name (None: ``tags``)."""
    if isinstance(name, VerdictFormat):
        return name
    if name is None:
        return TAGS
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown verdict format {name!r}; known: {', '.join(VERDICT_FORMATS)}") from None
