"""The scenario registry (read from the TOML files in ``scenarios/``), markers and ids."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path

from pytest_rmb.data import FileSamples, find_data_file, path_escape, read_samples

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

GOALS = ("helpfulness", "harmlessness")
FIELDS = ("id", "goal", "task", "name", "pairwise", "bon", "description")

KIND_MARKERS = {
    "pairwise": "RMB pairwise samples: correct when score(chosen) > score(rejected)",
    "bon": "RMB Best-of-N lists: correct when the best answer outscores every loser",
}
GOAL_MARKERS = {
    "helpfulness": "RMB helpfulness scenarios (12 tasks, 37 subcategories)",
    "harmlessness": "RMB harmlessness scenarios (S1..S11 hazards and multi)",
}


class RegistryError(Exception):
    """A scenario definition file that cannot be used."""


def snake_case(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@dataclass(frozen=True)
class Scenario:
    id: str
    goal: str
    task: str
    name: str
    pairwise: str
    bon: str
    description: str

    @property
    def task_id(self) -> str:
        return snake_case(self.task)

    @property
    def markers(self) -> tuple[str, ...]:
        """Goal marker, plus the task marker for helpfulness (harmlessness has no tasks)."""
        if self.goal == "helpfulness":
            return (self.goal, self.task_id)
        return (self.goal,)

    def file(self, kind: str) -> str:
        return self.pairwise if kind == "pairwise" else self.bon

    # Where a scenario's samples come from; a user's own scenario (user_sets.UserScenario) overrides
    # these, so that collection, provenance and reports treat both alike.

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of sample the scenario has: those it names a data file for."""
        return tuple(kind for kind in ("pairwise", "bon") if self.file(kind))

    def kind_markers(self, kind: str) -> tuple[str, ...]:
        """Markers of this kind's items only, beyond the scenario's ``markers`` (RMB's have none)."""
        return ()

    def locate(self, dataset: Path | None, kind: str) -> tuple[Path | None, str]:
        """The data file of ``kind`` under the data folder, as ``data.find_data_file`` finds it."""
        assert dataset is not None, "RMB scenarios run only with a data folder"
        return find_data_file(dataset, self.file(kind))

    def read(self, path: Path, kind: str) -> FileSamples:
        return read_samples(path, kind, self.id)


@cache
def registry() -> tuple[Scenario, ...]:
    """Every scenario shipped with the plugin, sorted by id (the collection order)."""
    folder = files("pytest_rmb.scenario_files")
    scenarios: list[Scenario] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            scenarios.extend(parse_scenarios(entry.read_text(encoding="utf-8"), str(entry)))
    seen: set[str] = set()
    for scenario in scenarios:
        if scenario.id in seen:
            raise RegistryError(f"scenario id {scenario.id!r} is defined twice")
        seen.add(scenario.id)
    return tuple(sorted(scenarios, key=lambda s: s.id))


def parse_scenarios(text: str, source: str) -> list[Scenario]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{source}: {exc}") from None
    tables = document.get("scenario", [])
    if not isinstance(tables, list):
        raise RegistryError(f"{source}: 'scenario' must be an array of tables ([[scenario]])")
    parsed = []
    for index, table in enumerate(tables):
        where = f"{source}: scenario {index}"
        # Which scenario, when it says: the index alone is hard to find in a file of twenty.
        named = f" (id {table['id']!r})" if isinstance(table.get("id"), str) and table["id"] else ""
        for field in FIELDS:
            if not isinstance(table.get(field), str) or not table[field]:
                raise RegistryError(f"{where}: field '{field}' must be a non-empty string{named}")
        unknown = sorted(set(table) - set(FIELDS))
        if unknown:
            raise RegistryError(f"{where}: unknown field(s) {', '.join(unknown)}{named}")
        if table["goal"] not in GOALS:
            raise RegistryError(f"{where}: field 'goal' must be one of {', '.join(GOALS)}{named}")
        if not re.fullmatch(r"[a-z0-9_]+/[a-z0-9_]+", table["id"]):
            raise RegistryError(f"{where}: field 'id' must look like 'task/name' in snake_case{named}")
        for field in ("pairwise", "bon"):
            # A data path is joined to the user's data folder: it must not lead out of it.
            escape = path_escape(table[field])
            if escape:
                raise RegistryError(f"{where} ({table['id']}): field '{field}' {table[field]!r} {escape}")
        parsed.append(Scenario(**{field: table[field] for field in FIELDS}))
    return parsed


def task_markers() -> dict[str, str]:
    """One marker per helpfulness task, in snake_case."""
    tasks = sorted({s.task for s in registry() if s.goal == "helpfulness"})
    return {snake_case(task): f"RMB helpfulness task: {task}" for task in tasks}


def all_markers() -> dict[str, str]:
    return {**GOAL_MARKERS, **KIND_MARKERS, **task_markers()}


_OPERATORS = {"and", "or", "not", "(", ")"}


def join_spaced_words(expression: str) -> str:
    """Let ``-k "Data Management"`` select ``data_management``.

    pytest's ``-k`` grammar has no way to write a space inside a name, so two words with no operator
    between them are a syntax error there. Joining such words with ``_`` turns the scenario's
    display name into its id (``-k`` is case-insensitive); any expression pytest already accepts is
    returned unchanged.
    """
    if any(ch in expression for ch in "=\"'"):
        return expression
    tokens = re.findall(r"[()]|[^\s()]+", expression)
    joined: list[str] = []
    previous_is_word = False
    for token in tokens:
        is_word = token not in _OPERATORS
        if is_word and previous_is_word:
            joined[-1] = f"{joined[-1]}_{token}"
        else:
            joined.append(token)
        previous_is_word = is_word
    if len(joined) == len(tokens):
        return expression
    return " ".join(joined)
