"""Setting parsers: a setting's text in, its typed value out, or an error that says what was expected.

Every way a user sets something parses its text here: the ``--rmb-*`` options and their ini mirrors,
the ``--rmb-model-arg KEY=VALUE`` settings of each backend, and the flags of ``pytest-rmb
compare``. One module, so that the same setting is refused by the same rule with the same words
wherever it is given.

A leaf: it imports nothing from pytest_rmb, so options, every backend and the command-line tools may
all import it.

Errors are :class:`SettingError`, an ``argparse.ArgumentTypeError`` (argparse then prints the message
itself: ``argument --rmb-seed: expected an integer >= 0, got -1``) that is also a ``ValueError`` (code
that parses outside argparse catches the kind of error it expects). Messages read ``expected WHAT,
got GIVEN``: the text as typed when it does not parse, the parsed value when it is out of range.
Each parser carries a ``type_name``, the short word ``pytest-rmb backends`` lists it by.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class SettingError(argparse.ArgumentTypeError, ValueError):
    """A setting's text that its parser refuses; the message says what would be accepted."""


def named(type_name: str) -> Callable[[Callable[[str], T]], Callable[[str], T]]:
    """Give a parser the word listings show for its values (``N=INT``, ``order=BOTH|RANDOM``)."""
    def mark(parse: Callable[[str], T]) -> Callable[[str], T]:
        parse.type_name = type_name  # type: ignore[attr-defined]
        return parse
    return mark


def renamed(type_name: str, parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` under another word in listings (``timeout=SECONDS``); a wrapper, so that the shared
    parser keeps its own."""
    def wrapped(text: str) -> T:
        return parse(text)

    wrapped.type_name = type_name  # type: ignore[attr-defined]
    return wrapped


def type_name(parse: Callable[[str], Any]) -> str:
    return getattr(parse, "type_name", getattr(parse, "__name__", "value"))


def closest_names(typed: str, candidates: Iterable[str], count: int = 3, cutoff: float = 0.6) -> list[str]:
    """The names among ``candidates`` closest to ``typed``, best first: the "did you mean" of every
    message about a name the tool does not know (a setting, a scheme, a marker, a node id). A
    ``cutoff`` of 0 always names some: for a node id, where any real one helps more than none."""
    return difflib.get_close_matches(typed, list(candidates), n=count, cutoff=cutoff)


def _number(text: str, convert: Callable[[str], T], wanted: str) -> T:
    try:
        return convert(text)
    except ValueError:
        raise SettingError(f"expected {wanted}, got {text!r}") from None


def int_at_least(lowest: int, wanted: str) -> Callable[[str], int]:
    @named("int")
    def parse(text: str) -> int:
        value = _number(text, int, wanted)
        if value < lowest:
            raise SettingError(f"expected {wanted}, got {value}")
        return value

    return parse


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "an integer >= 0")


@named("int")
def integer(text: str) -> int:
    return _number(text, int, "an integer")


def _float_in(text: str, wanted: str, accepts: Callable[[float], bool]) -> float:
    # Infinity and NaN parse as floats but are no setting's value: "expected a number" covers them.
    value = _number(text, float, wanted)
    if not math.isfinite(value) or not accepts(value):
        raise SettingError(f"expected {wanted}, got {value}")
    return value


@named("float")
def positive_float(text: str) -> float:
    return _float_in(text, "a number > 0", lambda value: value > 0)


@named("float")
def non_negative_float(text: str) -> float:
    return _float_in(text, "a number >= 0", lambda value: value >= 0)


@named("float")
def fraction(text: str) -> float:
    """A share of something, both ends allowed: a drop of 0 or of everything can be meant."""
    return _float_in(text, "a number between 0 and 1", lambda value: 0 <= value <= 1)


@named("float")
def significance_level(text: str) -> float:
    """An alpha for a significance test: 0 could never mark a difference and 1 would mark every
    one, so both ends are refused, for ``--rmb-alpha`` and ``compare --alpha`` alike."""
    return _float_in(text, "a number between 0 and 1, both excluded", lambda value: 0 < value < 1)


@named("bool")
def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"expected true or false, got {text!r}")


@named("text")
def text_value(text: str) -> str:
    return text


def choice(*options: str) -> Callable[[str], str]:
    @named("|".join(options))
    def parse(text: str) -> str:
        if text not in options:
            raise SettingError(f"expected one of {', '.join(options)}, got {text!r}")
        return text
    return parse


DEVICE_HELP = "auto|cpu|cuda|cuda:N"
DTYPES = ("auto", "float32", "bfloat16", "float16")


@named("device")
def device_name(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise SettingError(f"expected {DEVICE_HELP}, got {text!r}")


dtype_name = named("dtype")(choice(*DTYPES))


# Prefixes of API keys and tokens (Hugging Face, OpenAI, Groq, xAI, GitHub, Stripe-style keys).
_KEY_PREFIXES = ("hf_", "sk_", "gsk_", "xai_", "ghp_", "gho_", "github_pat_", "pk_", "rk_")


def looks_like_key(text: str) -> bool:
    """True for text shaped like an API key or token: a known key prefix, or one long word of letters,
    digits, ``-`` and ``_`` in mixed case or with small letters and digits (names and settings are
    rarely like that; keys are). A URL, a path, a host:port or a number never is."""
    word = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]+", word):
        return False
    if word.lower().replace("-", "_").startswith(_KEY_PREFIXES):
        return True
    return len(word) >= 20 and any(c.islower() for c in word) and (
        any(c.isupper() for c in word) or any(c.isdigit() for c in word))


@named("name")
def env_var_name(text: str) -> str:
    """``api_key_env=NAME``: the name of the variable that holds a key. Never echoes the value:
    a user who pasted the key itself there must not see it printed, here or later. A key such as
    ``hf_...`` or ``gsk_...`` is a valid identifier, so what looks like one is refused too: a known
    key prefix, or a long name in mixed case or with small letters and digits (variable names are
    rarely like that; keys are)."""
    name = text.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or looks_like_key(name):
        raise SettingError("expected the NAME of an environment variable, such as MY_JUDGE_KEY (letters, digits, "
                           "_; not something that looks like a key): keys are read from the environment only")
    return name
