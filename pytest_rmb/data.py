"""RMB data files -> immutable samples.

Reads RMB's upstream JSON arrays (or JSON Lines with the same records) and validates every record,
so that a bad file is reported once, with file, record index and field, instead of failing deep
inside scoring.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path, PureWindowsPath
from typing import Any, NamedTuple

PAIRWISE = "pairwise"
BON = "bon"

# Reporting every problem of a badly broken file would drown the one that matters.
MAX_PROBLEMS_SHOWN = 10


class Message(NamedTuple):
    role: str
    content: str
    language: str | None = None


Conversation = tuple[Message, ...]


class Response(NamedTuple):
    model: str
    text: str


@dataclass(frozen=True, slots=True)
class PairSample:
    scenario: str
    uid: str
    conversation: Conversation
    chosen: Response
    rejected: Response

    kind = PAIRWISE

    @property
    def responses(self) -> tuple[Response, ...]:
        """Chosen first, then rejected: the order scores are reported in."""
        return (self.chosen, self.rejected)


@dataclass(frozen=True, slots=True)
class BonSample:
    scenario: str
    uid: str
    conversation: Conversation
    best: Response
    losers: tuple[Response, ...]

    kind = BON

    @property
    def responses(self) -> tuple[Response, ...]:
        """Best first, then the losers in upstream order."""
        return (self.best, *self.losers)


Sample = PairSample | BonSample


# Stand-ins for the samples of a scenario whose data file is missing, empty or invalid: each
# becomes one item, so that the run reports the problem where the samples would have been.

EMPTY = "empty"


@dataclass(frozen=True)
class MissingData:
    """Stands in for the samples of a scenario whose data file is absent or holds no records."""

    scenario: str
    kind: str
    file: str
    # "" when nothing is there, EMPTY for a file without records, else what was found instead.
    problem: str = ""

    def as_dict(self) -> dict:
        """What the item's report carries to the controller (plain builtins)."""
        entry = {"scenario": self.scenario, "kind": self.kind, "file": self.file}
        if self.problem:
            entry["problem"] = self.problem
        return entry


@dataclass(frozen=True)
class BadData:
    """Stands in for the samples of a scenario whose data file is invalid."""

    scenario: str
    kind: str
    file: str
    message: str


class DataFileError(Exception):
    """A data file that cannot be used; ``problems`` name record index and field."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        lines = [f"{path}: {p}" for p in shown]
        if more:
            lines.append(f"{path}: ... and {more} more problems")
        super().__init__("\n".join(lines))


def sample_dataset() -> Path:
    """The small dataset we wrote ourselves, shipped in the wheel, in RMB's layout."""
    return Path(str(files("pytest_rmb.scenario_files").joinpath("sample")))


def data_file(root: Path, relative: str) -> Path | None:
    """The file for an upstream relative path, accepting a ``.jsonl`` twin; None when absent."""
    return find_data_file(root, relative)[0]


def find_data_file(root: Path, relative: str) -> tuple[Path | None, str]:
    """(the file, "") for an upstream relative path, accepting a ``.jsonl`` twin, or (None, what
    was found there instead: "" when nothing was).

    Raises ValueError for a relative path that would leave ``root``. The check is on the path as
    written, not on where it resolves: a dataset whose files are symbolic links (a Hugging Face hub
    snapshot, a DVC or git-annex checkout) keeps working.
    """
    escape = path_escape(relative)
    if escape:
        raise ValueError(f"data file path {relative!r} {escape}")
    path = root / relative
    candidates = (path, path.with_suffix(".jsonl"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate, ""
    for candidate in candidates:
        if candidate.is_dir():
            return None, f"expected a file, found a directory: {candidate.name}/"
        if candidate.is_symlink():
            return None, f"expected a file, found a broken symbolic link: {candidate.name}"
        if candidate.exists():
            return None, f"expected a file, found something that is not a regular file: {candidate.name}"
    return None, ""


def path_escape(relative: str) -> str:
    """Why a data path from a scenario definition could leave the data folder; "" when it cannot."""
    parts = relative.replace("\\", "/").split("/")
    if relative.startswith(("/", "\\")) or PureWindowsPath(relative).drive:
        return "is absolute; it must be relative to the data folder"
    if ".." in parts:
        return "contains '..'; it must stay inside the data folder"
    return ""


@dataclass(frozen=True)
class BadRecord:
    """One record of a data file that cannot be used; the rest of its file still can."""

    index: int
    uid: str | None  # None when the uid itself is missing, invalid or a duplicate
    problem: str  # "field 'chosen.answer': expected a string, got null"

    def describe(self, path: Path, kind: str) -> str:
        uid = f" ({_UID[kind]} {self.uid!r})" if self.uid is not None else ""
        return f"{path}: record {self.index}{uid}: {self.problem}"


@dataclass(frozen=True)
class FileSamples:
    """What one data file holds: its valid samples, sorted by uid, and its bad records."""

    samples: list[Sample]
    bad: list[BadRecord]


def load_samples(path: Path, kind: str, scenario: str) -> list[Sample]:
    """All samples of one file, sorted by uid; raises DataFileError naming every bad record."""
    contents = read_samples(path, kind, scenario)
    if contents.bad:
        raise DataFileError(path, [f"record {bad.index}: {bad.problem}" for bad in contents.bad])
    return contents.samples


def load_scenarios(root: Path, scenarios: Iterable[Any]) -> list[Sample]:
    """Every sample of the given scenarios (anything with ``id`` and ``file(kind)``) found under
    ``root``, pairwise then Best-of-N per scenario; a missing file contributes nothing."""
    samples: list[Sample] = []
    for scenario in scenarios:
        for kind in (PAIRWISE, BON):
            path = data_file(root, scenario.file(kind))
            if path is not None:
                samples.extend(load_samples(path, kind, scenario.id))
    return samples


def read_samples(path: Path, kind: str, scenario: str) -> FileSamples:
    """The valid samples of one file and its bad records, each named by index, uid and field.

    Raises DataFileError only when the file as a whole cannot be read (not UTF-8, invalid JSON,
    not an array)."""
    records = _read_records(path)
    parse = _parse_pair if kind == PAIRWISE else _parse_bon
    samples: list[Sample] = []
    bad: list[BadRecord] = []
    first_index: dict[str, int] = {}
    for index, record in enumerate(records):
        try:
            sample = parse(record, scenario)
        except InvalidRecord as invalid:
            bad.append(BadRecord(index, _uid_of(record, kind), str(invalid)))
            continue
        if sample.uid in first_index:
            bad.append(BadRecord(
                index, None,
                f"field '{_UID[kind]}': duplicate uid {sample.uid!r} (first at record {first_index[sample.uid]})",
            ))
            continue
        first_index[sample.uid] = index
        samples.append(sample)
    samples.sort(key=lambda s: uid_sort_key(s.uid))
    return FileSamples(samples, bad)


def _uid_of(record: object, kind: str) -> str | None:
    uid = record.get(_UID[kind]) if isinstance(record, dict) else None
    return uid if isinstance(uid, str) and uid else None


_DIGITS = re.compile(r"([0-9]+)")


# Each uid's key is asked for when its file is read and again when the run's records are put in
# order for the summary: kept, the second costs nothing.
@functools.lru_cache(maxsize=1 << 17)
def uid_sort_key(uid: str) -> tuple[tuple[str | int, ...], str]:
    """Natural order: the digit runs of a uid compare as numbers, the rest as text, so that RMB's
    decimal uids and a user's ``p2``, ``p10`` both sort as a reader counts (``11`` < ``p1`` < ``p2`` <
    ``p10``). The split alternates text and number from a text part (maybe empty), so two keys only
    ever compare text with text and number with number; the uid itself breaks ties (``7``, ``07``)."""
    parts = _DIGITS.split(uid)
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), uid


_UID = {PAIRWISE: "pair_uid", BON: "bon_uid"}


class InvalidRecord(Exception):
    pass


# The sha256 of each data file as it was read, by (path, size, mtime): the summary's provenance
# names every file a run read by its digest, and reading RMB's 93 MB again for it costs more than
# the hashing of the bytes already in hand.
_DIGESTS: dict[tuple[str, int, int], str] = {}


def _stat_key(path: Path) -> tuple[str, int, int]:
    status = path.stat()
    return str(path), status.st_size, status.st_mtime_ns


def file_digest(path: Path) -> str:
    """The file's sha256, hex: the one taken when it was read, unless it has changed since."""
    key = _stat_key(path)
    known = _DIGESTS.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_records(path: Path) -> list:
    key = _stat_key(path)
    raw = path.read_bytes()
    if len(raw) == key[1]:  # the file did not change while it was read
        _DIGESTS[key] = hashlib.sha256(raw).hexdigest()
    try:
        return _parse_records(raw, path)
    except UnicodeDecodeError as exc:
        raise DataFileError(path, [f"not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None


def _parse_records(raw: bytes, path: Path) -> list:
    if path.suffix == ".jsonl":
        records = []
        # Split the bytes at newlines: str.splitlines would also split at U+2028 inside a string.
        for line_number, raw_line in enumerate(raw.split(b"\n"), 1):
            line = raw_line.decode("utf-8")
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataFileError(path, [f"line {line_number}: invalid JSON: {exc.msg}"]) from None
        return records
    try:
        # Parsing the bytes is a third faster than parsing the decoded text.
        records = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataFileError(
            path, [f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]
        ) from None
    if not isinstance(records, list):
        raise DataFileError(path, [f"expected a JSON array of records, got {json_type(records)}"])
    return records


def json_type(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


_WANTED: dict[type, str] = {str: "a string", list: "an array", dict: "an object"}


def _field(record: dict, name: str, expected: type, where: str = ""):
    # Labels are built only for an error: this runs for every field of every record read.
    if name not in record:
        raise InvalidRecord(f"field '{where}{name}': missing")
    value = record[name]
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        wanted = _WANTED[expected]
        raise InvalidRecord(f"field '{where}{name}': expected {wanted}, got {json_type(value)}")
    return value


def _conversation(record: dict) -> Conversation:
    turns = _field(record, "conversation_input", list)
    if not turns:
        raise InvalidRecord("field 'conversation_input': empty")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise InvalidRecord(f"field 'conversation_input[{i}]': expected an object, got {json_type(turn)}")
        role, content, language = turn.get("role"), turn.get("content"), turn.get("language")
        if type(role) is str and type(content) is str and (language is None or type(language) is str):
            messages.append(Message(role, content, language))
            continue
        where = f"conversation_input[{i}]."
        if language is not None and type(language) is not str:
            raise InvalidRecord(f"field '{where}language': expected a string, got {json_type(language)}")
        _field(turn, "role", str, where)
        _field(turn, "content", str, where)
    if messages[-1].role != "user":
        raise InvalidRecord(
            f"field 'conversation_input[{len(messages) - 1}].role': the last message must come "
            f"from the user, got {messages[-1].role!r}"
        )
    return tuple(messages)


def _response(value: object, label: str) -> Response:
    if not isinstance(value, dict):
        raise InvalidRecord(f"field '{label}': expected an object, got {json_type(value)}")
    # An empty answer is real RMB data (Harmlessness S5 pairs 13586, 13587): valid, scored as is.
    text = value.get("answer")
    if type(text) is not str:
        text = _field(value, "answer", str, f"{label}.")
    model = value.get("llm_name", "")
    if not isinstance(model, str):
        raise InvalidRecord(f"field '{label}.llm_name': expected a string, got {json_type(model)}")
    return Response(model, text)


def _record(record: object) -> dict:
    if not isinstance(record, dict):
        raise InvalidRecord(f"expected an object, got {json_type(record)}")
    return record


def _parse_pair(record: object, scenario: str) -> PairSample:
    record = _record(record)
    uid = _field(record, "pair_uid", str)
    conversation = _conversation(record)
    if "chosen" not in record:
        raise InvalidRecord("field 'chosen': missing")
    if "reject" not in record:
        raise InvalidRecord("field 'reject': missing")
    return PairSample(
        scenario,
        uid,
        conversation,
        _response(record["chosen"], "chosen"),
        _response(record["reject"], "reject"),
    )


def _parse_bon(record: object, scenario: str) -> BonSample:
    record = _record(record)
    uid = _field(record, "bon_uid", str)
    conversation = _conversation(record)
    if "bon_best" not in record:
        raise InvalidRecord("field 'bon_best': missing")
    losers = _field(record, "loser_list", list)
    if not losers:
        raise InvalidRecord("field 'loser_list': empty (a Best-of-N list needs at least one loser)")
    return BonSample(
        scenario,
        uid,
        conversation,
        _response(record["bon_best"], "bon_best"),
        tuple(_response(loser, f"loser_list[{i}]") for i, loser in enumerate(losers)),
    )


def parse_record(record: object, kind: str, scenario: str) -> Sample:
    """One record in RMB's format -> its sample; raises InvalidRecord naming the field."""
    return _parse_pair(record, scenario) if kind == PAIRWISE else _parse_bon(record, scenario)
