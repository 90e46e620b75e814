"""Your own preference sets as scenarios: ``--rmb-scenarios FILE.toml`` and the JSONL rows they name.

A TOML file declares scenarios, one ``[[scenario]]`` table each::

    [[scenario]]
    name = "support"          # required; the id is TASK/NAME in snake_case: custom/support
    kind = "pairwise"         # required: pairwise or bon
    path = "data/support.jsonl"   # required, relative to this TOML file
    task = "custom"           # optional (default custom); also a marker
    goal = "custom"           # optional (default custom); helpfulness or harmlessness count in RMB's sections
    markers = ["support"]     # optional, extra markers of these items

A name may appear twice, once per kind. Rows are JSON Lines in the formats preference data already
comes in: TRL preference rows (``prompt``, ``chosen``, ``rejected``; strings or chat message lists),
``prompt``/``best``/``losers`` for Best-of-N, or RMB's own records. A row's uid is its ``id``
(else ``uid``, else ``pair_uid``/``bon_uid``) or, without one, its 1-based line number.

A bad TOML is the user's mistake to fix before anything runs (:class:`UserSetsError`, a usage
error); a bad row is one error item, like a bad RMB record, and every other row is still scored.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_rmb.data import (
    BON,
    PAIRWISE,
    BadRecord,
    BonSample,
    DataFileError,
    FileSamples,
    InvalidRecord,
    Message,
    PairSample,
    Response,
    Sample,
    json_type,
    parse_record,
    uid_sort_key,
)

# tomllib, or tomli before Python 3.11: chosen in one place.
from pytest_rmb.scenarios import Scenario, snake_case, tomllib

KINDS = (PAIRWISE, BON)
DEFAULT_TASK = "custom"
DEFAULT_GOAL = "custom"
REQUIRED = ("name", "kind", "path")
OPTIONAL = ("task", "goal", "markers", "description")
# Names a user's marker may not take: pytest's own marks would change how the items run, and the
# kind markers come with the kind.
RESERVED_MARKERS = frozenset(
    {"skip", "skipif", "xfail", "parametrize", "usefixtures", "filterwarnings", "xdist_group", *KINDS}
)
_MARKER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# The fields a row's uid is taken from, first present wins.
UID_FIELDS = ("id", "uid")
RMB_UID_FIELDS = {PAIRWISE: "pair_uid", BON: "bon_uid"}


class UserSetsError(Exception):
    """A scenario file that cannot be used; the message names the file, table and field."""


@dataclass(frozen=True)
class UserScenario(Scenario):
    """A scenario declared in a user's TOML file; ``pairwise``/``bon`` are absolute data paths ("" when
    the scenario has no set of that kind)."""

    # (kind, TOML file, table number) of each table that declared it, for messages.
    origins: tuple[tuple[str, str, int], ...] = ()
    # (kind, markers) of each kind's own ``markers``: they mark that kind's items only.
    own_markers: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def markers(self) -> tuple[str, ...]:
        """Goal and task markers, for every goal (RMB's harmlessness scenarios have no task marker)."""
        return tuple(dict.fromkeys((snake_case(self.goal), self.task_id)))

    def kind_markers(self, kind: str) -> tuple[str, ...]:
        return dict(self.own_markers).get(kind, ())

    def locate(self, dataset: Path | None, kind: str) -> tuple[Path | None, str]:
        path = Path(self.file(kind))
        if path.is_file():
            return path, ""
        if path.is_dir():
            return None, f"expected a file, found a directory: {path.name}/"
        return None, ""

    def read(self, path: Path, kind: str) -> FileSamples:
        return read_rows(path, kind, self.id)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(source for _, source, _ in self.origins))


# --- the TOML files -------------------------------------------------------------------------------


def load_user_scenarios(files: Sequence[Path], reserved: Sequence[Scenario] = ()) -> tuple[UserScenario, ...]:
    """The scenarios the TOML ``files`` declare, sorted by id; ``reserved`` are RMB's, whose ids and
    tasks a user's scenario may not take. Raises UserSetsError naming file, table and field."""
    reserved_ids = {s.id for s in reserved}
    reserved_tasks = {s.task_id for s in reserved}
    merged: dict[str, dict] = {}
    for toml in files:
        for number, table in enumerate(_tables(toml), 1):
            entry = _table(toml, number, table, reserved_ids, reserved_tasks)
            _merge(merged, entry, toml, number)
    return tuple(
        UserScenario(
            id=scenario_id, goal=entry["goal"], task=entry["task"], name=entry["name"],
            pairwise=entry["paths"].get(PAIRWISE, ""), bon=entry["paths"].get(BON, ""),
            description=entry["description"],
            origins=tuple(entry["origins"]), own_markers=tuple(sorted(entry["markers"].items())),
        )
        for scenario_id, entry in sorted(merged.items())
    )


def _tables(toml: Path) -> list:
    try:
        text = toml.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserSetsError(f"{toml}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 text ({exc.reason})"
        raise UserSetsError(f"{toml}: cannot read: {reason or exc}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserSetsError(f"{toml}: invalid TOML: {exc}") from None
    unknown = sorted(set(document) - {"scenario"})
    if unknown:
        raise UserSetsError(f"{toml}: unknown key(s) {', '.join(unknown)}; scenarios are [[scenario]] tables")
    tables = document.get("scenario")
    if not isinstance(tables, list) or not tables:
        raise UserSetsError(f"{toml}: no [[scenario]] table; each scenario is one [[scenario]] table "
                            "with name, kind and path")
    return tables


def _table(toml: Path, number: int, table: object, reserved_ids: set[str], reserved_tasks: set[str]) -> dict:
    where = f"{toml}: [[scenario]] #{number}"
    if not isinstance(table, dict):
        raise UserSetsError(f"{where}: expected a table, got {json_type(table)}")
    name = table.get("name")
    if isinstance(name, str) and name:
        where += f" (name {name!r})"

    def fail(field: str, problem: str) -> UserSetsError:
        return UserSetsError(f"{where}: field '{field}': {problem}")

    unknown = sorted(set(table) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise fail(unknown[0], f"unknown field; a [[scenario]] table takes {', '.join(REQUIRED + OPTIONAL)}")
    for field in REQUIRED:
        if field not in table:
            raise fail(field, "missing (required: " + ", ".join(REQUIRED) + ")")
    name = _text(table, "name", fail)
    kind = _text(table, "kind", fail)
    if kind not in KINDS:
        raise fail("kind", f"expected \"pairwise\" or \"bon\", got {kind!r}")
    task = _text(table, "task", fail, DEFAULT_TASK)
    goal = _text(table, "goal", fail, DEFAULT_GOAL)
    for field, value in (("name", name), ("task", task), ("goal", goal)):
        if not snake_case(value):
            raise fail(field, f"{value!r} has no letter or digit to make an id from")
    scenario_id = f"{snake_case(task)}/{snake_case(name)}"
    if scenario_id in reserved_ids:
        raise fail("name", f"the id {scenario_id!r} is one of RMB's scenarios; choose another name or task")
    if snake_case(task) in reserved_tasks:
        raise fail("task", f"{task!r} is one of RMB's tasks (its rows would mix with RMB's); choose another")
    relative = _text(table, "path", fail)
    # Relative to the TOML file, wherever pytest runs from; '..' is fine, the file is the user's own.
    path = (toml.parent / relative).resolve()
    if not path.is_file():
        found = "a directory" if path.is_dir() else "no such file"
        raise fail("path", f"{relative!r}: {found} ({path})")
    return {
        "id": scenario_id, "name": name, "kind": kind, "task": task, "goal": goal, "path": str(path),
        "markers": _markers(table, fail), "description": _text(table, "description", fail, ""),
    }


def _text(table: dict, field: str, fail, default: str | None = None) -> str:
    if field not in table and default is not None:
        return default
    value = table[field]
    if not isinstance(value, str):
        raise fail(field, f"expected a string, got {json_type(value)}")
    if not value and default != "":
        raise fail(field, "empty")
    return value


def _markers(table: dict, fail) -> tuple[str, ...]:
    value = table.get("markers", [])
    if not isinstance(value, list):
        raise fail("markers", f"expected a list of marker names, got {json_type(value)}")
    for i, marker in enumerate(value):
        if not isinstance(marker, str) or not _MARKER.fullmatch(marker):
            raise fail(f"markers[{i}]", f"expected a marker name (letters, digits, _), got {marker!r}")
        if marker in RESERVED_MARKERS:
            raise fail(f"markers[{i}]", f"{marker!r} is reserved (pytest's own mark, or a kind marker "
                       "that comes with the kind)")
    return tuple(dict.fromkeys(value))


def _merge(merged: dict[str, dict], entry: dict, toml: Path, number: int) -> None:
    """Add a table to its scenario: a name may appear once per kind, with one goal."""
    scenario_id, kind = entry["id"], entry["kind"]
    where = f"{toml}: [[scenario]] #{number} (name {entry['name']!r})"
    known = merged.get(scenario_id)
    if known is None:
        merged[scenario_id] = {
            **{k: entry[k] for k in ("name", "task", "goal", "description")},
            "paths": {kind: entry["path"]}, "markers": {kind: entry["markers"]},
            "origins": [(kind, str(toml), number)],
        }
        return
    first = next(f"{source}: [[scenario]] #{n}" for _, source, n in known["origins"])
    if kind in known["paths"]:
        raise UserSetsError(f"{where}: field 'kind': scenario {scenario_id} already has a {kind} set "
                            f"({first}); a name may appear once per kind")
    if entry["goal"] != known["goal"]:
        raise UserSetsError(f"{where}: field 'goal': {entry['goal']!r} differs from {known['goal']!r} of the "
                            f"other kind of {scenario_id} ({first}); one scenario has one goal")
    known["paths"][kind] = entry["path"]
    known["markers"][kind] = entry["markers"]
    known["origins"].append((kind, str(toml), number))
    known["description"] = known["description"] or entry["description"]


def user_markers(scenarios: Iterable[Scenario], known: Iterable[str] = ()) -> dict[str, str]:
    """Every marker the user's scenarios carry that is not in ``known``, with the ids carrying it."""
    carriers: dict[str, list[str]] = {}
    for scenario in scenarios:
        if not isinstance(scenario, UserScenario):
            continue
        names = [*scenario.markers, *(m for _, marks in scenario.own_markers for m in marks)]
        for name in dict.fromkeys(names):
            carriers.setdefault(name, []).append(scenario.id)
    skip = set(known)
    return {name: f"your own scenarios (--rmb-scenarios): {', '.join(ids)}"
            for name, ids in sorted(carriers.items()) if name not in skip}


def user_sources(scenarios: Iterable[Scenario]) -> list[str]:
    """The TOML files the run's user scenarios come from, in order."""
    found: dict[str, None] = {}
    for scenario in scenarios:
        if isinstance(scenario, UserScenario):
            found.update(dict.fromkeys(scenario.sources))
    return list(found)


# --- the rows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadRow(BadRecord):
    """A bad line of a user's JSONL file: ``index`` is its 1-based line number."""

    shown: str = ""  # the row's own id as the message shows it ("id 'a7'"); "" when it has none

    def describe(self, path: Path, kind: str) -> str:
        return f"{path}: line {self.index}" + (f" ({self.shown})" if self.shown else "") + f": {self.problem}"


def read_rows(path: Path, kind: str, scenario: str) -> FileSamples:
    """The valid samples of a user's JSONL file, sorted by uid, and its bad lines.

    Every line is judged on its own, undecodable or invalid JSON included, so one broken line is
    one error item. Raises DataFileError only when the file cannot be read at all."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFileError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    samples: list[Sample] = []
    bad: list[BadRecord] = []
    first_line: dict[str, int] = {}
    # Split the bytes, not the text: str.splitlines would also break at U+2028 inside a JSON string.
    for number, line in enumerate(raw.split(b"\n"), 1):
        if number == 1:
            line = line.removeprefix(codecs.BOM_UTF8)
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            bad.append(BadRow(number, str(number), f"not UTF-8 text ({exc.reason} at byte {exc.start} of the line)"))
            continue
        except json.JSONDecodeError as exc:
            bad.append(BadRow(number, str(number), f"invalid JSON at column {exc.colno}: {exc.msg}"))
            continue
        try:
            uid, shown = _uid(row, kind, number)
        except InvalidRecord as invalid:
            bad.append(BadRow(number, f"line-{number}", str(invalid)))
            continue
        try:
            sample = parse_row(row, kind, scenario, uid)
        except InvalidRecord as invalid:
            bad.append(BadRow(number, uid, str(invalid), shown))
            continue
        if uid in first_line:
            problem = (f"field '{shown.split()[0]}': duplicate uid {uid!r}" if shown
                       else f"no id field, and its line number {uid!r} is another row's id")
            bad.append(BadRow(number, f"line-{number}", f"{problem} (first at line {first_line[uid]})", shown))
            continue
        first_line[uid] = number
        samples.append(sample)
    samples.sort(key=lambda s: uid_sort_key(s.uid))
    return FileSamples(samples, bad)


def _uid(row: object, kind: str, number: int) -> tuple[str, str]:
    """(uid, how a message shows it) of a row: its id field, else its line number (shown as "")."""
    if not isinstance(row, dict):
        return str(number), ""
    for field in (*UID_FIELDS, RMB_UID_FIELDS[kind]):
        if field in row:
            value = row[field]
            if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
                raise InvalidRecord(f"field '{field}': expected a non-empty string or an integer, "
                                    f"got {json_type(value) if value != '' else 'an empty string'}")
            return str(value), f"{field} {str(value)!r}"
    return str(number), ""


def parse_row(row: object, kind: str, scenario: str, uid: str) -> Sample:
    """One row in any accepted format -> a sample; raises InvalidRecord naming the field."""
    if not isinstance(row, dict):
        raise InvalidRecord(f"expected a JSON object, got {json_type(row)}")
    if "conversation_input" in row:
        # RMB's own record format; its uid field is filled in from the rule above.
        return parse_record({**row, RMB_UID_FIELDS[kind]: uid}, kind, scenario)
    if kind == PAIRWISE:
        return _pair_row(row, scenario, uid)
    return _bon_row(row, scenario, uid)


_OTHER_KIND = {PAIRWISE: ("best", "losers"), BON: ("chosen", "rejected")}


def _require(row: dict, field: str, kind: str) -> object:
    if field in row:
        return row[field]
    hint = ""
    if any(other in row for other in _OTHER_KIND[kind]):
        other = BON if kind == PAIRWISE else PAIRWISE
        hint = f" (the row looks like a {other} row; its [[scenario]] table says kind = \"{kind}\")"
    raise InvalidRecord(f"field '{field}': missing{hint}")


def _pair_row(row: dict, scenario: str, uid: str) -> PairSample:
    prompt = _prompt(row)
    conversation, chosen = _answer(_require(row, "chosen", PAIRWISE), "chosen", prompt)
    other, rejected = _answer(_require(row, "rejected", PAIRWISE), "rejected", prompt)
    _same_conversation(conversation, other, "rejected", "chosen")
    return PairSample(scenario, uid, conversation, Response("", chosen), Response("", rejected))


def _bon_row(row: dict, scenario: str, uid: str) -> BonSample:
    prompt = _prompt(row)
    conversation, best = _answer(_require(row, "best", BON), "best", prompt)
    losers = _require(row, "losers", BON)
    if not isinstance(losers, list):
        raise InvalidRecord(f"field 'losers': expected a list of answers, got {json_type(losers)}")
    if not losers:
        raise InvalidRecord("field 'losers': empty (a Best-of-N list needs at least one loser)")
    texts = []
    for i, loser in enumerate(losers):
        other, text = _answer(loser, f"losers[{i}]", prompt)
        _same_conversation(conversation, other, f"losers[{i}]", "best")
        texts.append(Response("", text))
    return BonSample(scenario, uid, conversation, Response("", best), tuple(texts))


def _prompt(row: dict) -> tuple[Message, ...] | None:
    if "prompt" not in row:
        return None
    value = row["prompt"]
    if isinstance(value, str):
        return (Message("user", value),)
    if isinstance(value, list):
        if not value:
            raise InvalidRecord("field 'prompt': empty")
        return _messages(value, "prompt")
    raise InvalidRecord(f"field 'prompt': expected a string or a list of messages, got {json_type(value)}")


def _messages(value: list, label: str) -> tuple[Message, ...]:
    messages = []
    for i, message in enumerate(value):
        where = f"{label}[{i}]"
        if not isinstance(message, dict):
            raise InvalidRecord(f"field '{where}': expected a message {{role, content}}, got {json_type(message)}")
        fields = []
        for name in ("role", "content"):
            if name not in message:
                raise InvalidRecord(f"field '{where}.{name}': missing")
            if not isinstance(message[name], str):
                raise InvalidRecord(f"field '{where}.{name}': expected a string, got {json_type(message[name])}")
            fields.append(message[name])
        language = message.get("language")
        messages.append(Message(fields[0], fields[1], language if isinstance(language, str) else None))
    return tuple(messages)


def _answer(value: object, label: str, prompt: tuple[Message, ...] | None) -> tuple[tuple[Message, ...], str]:
    """(conversation, answer text) of one answer field: a string answers the prompt; a message list
    continues it (or, with no prompt, is the whole conversation), its final assistant message the answer."""
    if isinstance(value, str):
        if prompt is None:
            raise InvalidRecord(f"field 'prompt': missing (needed when '{label}' is a string)")
        conversation = prompt
        text = value
        last_label = f"prompt[{len(prompt) - 1}].role"
    elif isinstance(value, list):
        if not value:
            raise InvalidRecord(f"field '{label}': empty")
        messages = _messages(value, label)
        final = messages[-1]
        if final.role != "assistant":
            raise InvalidRecord(f"field '{label}[{len(value) - 1}].role': the final message is the answer and "
                                f"must come from the assistant, got {final.role!r}")
        conversation = (*(prompt or ()), *messages[:-1])
        text = final.content
        last_label = (f"{label}[{len(value) - 2}].role" if len(value) > 1
                      else f"prompt[{len(prompt) - 1}].role" if prompt else "")
    else:
        raise InvalidRecord(f"field '{label}': expected a string or a list of messages, got {json_type(value)}")
    if not conversation:
        raise InvalidRecord(f"field '{label}': no conversation before the answer; give a 'prompt', or the "
                            "messages before the answer in the list")
    if conversation[-1].role != "user":
        # As in RMB's data: the answer answers the user's last message.
        raise InvalidRecord(f"field '{last_label}': the message before the answer must come from the user, "
                            f"got {conversation[-1].role!r}")
    return conversation, text


def _same_conversation(first: tuple[Message, ...], other: tuple[Message, ...], label: str, reference: str) -> None:
    if other != first:
        raise InvalidRecord(f"field '{label}': the conversation before its answer differs from that of "
                            f"'{reference}'; both must answer the same conversation")
