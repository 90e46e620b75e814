"""Scenarios as pytest collectors.

Each scenario is a ``pytest.Module`` collector over ``pytest_rmb.benchmark`` at the virtual path
``<invocation dir>/rmb/<scenario id>``: node ids read ``rmb/code/data_management::test_pairwise[848]``
(prefixed by the way from the rootdir when pytest is started below it), pytest prints one progress
line per scenario, ``--lf`` and conftest lookup work as for files in the directory pytest was started
from, and the items stay real ``pytest.Function``s that can use fixtures.

The invocation dir, not the rootdir, because pytest picks the rootdir before plugins load and
counts the values of path options (``--rmb-model ./ckpt --rmb-data /data``) as paths: the rootdir
can end up as ``/``, and a ``conftest.py`` beside the user would no longer reach our items.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from pytest_rmb.data import EMPTY, BadData, BonSample, DataFileError, MissingData, PairSample, Sample
from pytest_rmb.nodeids import NODE_ROOT, closest, is_under
from pytest_rmb.options import sample_limit
from pytest_rmb.parsers import closest_names
from pytest_rmb.scenarios import Scenario


class ScenarioModule(pytest.Module):
    def __init__(self, *, scenario: Scenario, dataset: Path | None, limit: tuple[int, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.scenario = scenario
        self.dataset = dataset
        self.limit = limit  # (samples per kind, seed) of --rmb-limit

    @property
    def relative_id(self) -> str:
        """The node id's path part as seen from the invocation dir: ``rmb/<scenario id>``."""
        return f"{NODE_ROOT}/{self.scenario.id}"

    def _getobj(self):
        # The path is virtual; every scenario collects the same test functions.
        from pytest_rmb import benchmark

        return benchmark

    def collect(self):
        # A user's scenario may have one kind only: its other test function collects nothing.
        kinds = self.scenario.kinds
        items = [item for item in super().collect()
                 if not isinstance(item, pytest.Function) or item.originalname.removeprefix("test_") in kinds]
        # --setup-show and --setup-plan list the sample as a fixture set up per item: only then
        # does it go through the fixture machinery.
        functions = [item for item in items if isinstance(item, pytest.Function)]
        if not getattr(self.config.option, "setupshow", False):
            for item in functions:
                given_directly(item)
        share_location(functions)
        return items

    def parameters(self, kind: str) -> tuple[list[object], list[str], list]:
        """(values, ids, marks) for the ``rmb_sample`` parameter of the ``kind`` test."""
        if kind not in self.scenario.kinds:
            return [None], ["absent"], []  # dropped by collect()
        relative = self.scenario.file(kind)
        own = [getattr(pytest.mark, name) for name in self.scenario.kind_markers(kind)]
        try:
            path, found = self.scenario.locate(self.dataset, kind)
        except ValueError as exc:
            error = BadData(self.scenario.id, kind, relative, f"scenario {self.scenario.id}: {exc}")
            return [error], ["data-error"], own
        if path is None:
            missing = MissingData(self.scenario.id, kind, relative, found)
            under = f" under {self.dataset}" if self.dataset is not None and not Path(relative).is_absolute() else ""
            reason = f"missing data file: {relative} ({found or 'not found'}{under})"
            return [missing], ["missing-data"], [pytest.mark.skip(reason=reason), *own]
        try:
            contents = self.scenario.read(path, kind)
        except DataFileError as exc:
            return [BadData(self.scenario.id, kind, relative, str(exc))], ["data-error"], own
        if not contents.samples and not contents.bad:
            empty = MissingData(self.scenario.id, kind, relative, EMPTY)
            reason = f"empty data file: {path} (no records)"
            return [empty], ["empty-data"], [pytest.mark.skip(reason=reason), *own]
        samples = contents.samples
        if self.limit is not None:
            samples = limited(samples, *self.limit, scenario=self.scenario.id, kind=kind)
        values: list[object] = list(samples)
        ids = [s.uid for s in samples]
        # One failing item per bad record, so that every good record of the file is still scored.
        taken = {s.uid for s in contents.samples}
        for bad in contents.bad:
            values.append(BadData(self.scenario.id, kind, relative, bad.describe(path, kind)))
            ids.append(_error_id(bad.uid, bad.index, taken))
        return values, ids, own


def given_directly(item: pytest.Function) -> None:
    """Hand the item its arguments at collection, so that its setup resolves no fixture for them.

    Both are known by now: the sample is the item's parameter, and ``request`` is the item's own
    request object. pytest fills only the arguments an item does not hold yet, so a user's autouse
    fixtures still run; resolving these two instead would be about a tenth of a length-baseline
    run over the whole benchmark. pytest drops ``funcargs`` after the item ran, and fills them
    the usual way if it runs again (pytest-rerunfailures).
    """
    item.funcargs["rmb_sample"] = item.callspec.params["rmb_sample"]
    item.funcargs["request"] = item._request


def share_location(items: list[pytest.Function]) -> None:
    """Work out each test function's file and line once, not once per sample.

    pytest reports an item's ``location`` (file, line, name: in JUnit XML, -v lines and the xdist
    protocol) by inspecting the test function's source, about as costly as running a trivial test;
    the items of one test function here share that function, so they share its file and line.
    ``location`` is a cached property: setting it where the cache lives is what computing it does.
    """
    first: dict[str, tuple[str, int | None]] = {}
    for item in items:
        shared = first.get(item.originalname)
        if shared is None:
            path, line, _ = item.location
            first[item.originalname] = (path, line)
        else:
            item.__dict__["location"] = (*shared, item.getmodpath())


def limited(samples: list[Sample], limit: int, seed: int, *, scenario: str, kind: str) -> list[Sample]:
    """``limit`` of the samples, drawn by a shuffle seeded with ``seed``, kept in their order.

    The draw depends on nothing but the seed, the scenario, the kind and the file's samples, so
    that every model, every run and every xdist worker keeps the same subset.
    """
    if len(samples) <= limit:
        return samples
    order = list(range(len(samples)))
    random.Random(f"rmb-limit/{seed}/{scenario}/{kind}").shuffle(order)
    return [samples[i] for i in sorted(order[:limit])]


def _error_id(uid: str | None, index: int, taken: set[str]) -> str:
    """``data-error-<uid>``, or ``data-error-record-<index>`` when the uid is unusable; unique."""
    candidate = f"data-error-{uid}" if uid is not None else f"data-error-record-{index}"
    if candidate in taken:
        candidate = f"data-error-record-{index}"
    base, number = candidate, 2
    while candidate in taken:
        candidate, number = f"{base}-{number}", number + 1
    taken.add(candidate)
    return candidate


class InvocationDirectory(pytest.Directory):
    """A directory between the rootdir and the invocation dir, holding the RMB collectors.

    pytest applies a conftest.py's fixtures to an item only when one of the item's parents has
    the conftest's directory as node id; these nodes give RMB items those parents, so that an
    ``rmb_model`` override in a conftest.py there is used.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.children: list[pytest.Collector] = []

    def collect(self) -> list[pytest.Collector]:
        return self.children


def rmb_collectors(session: pytest.Session, scenarios, dataset: Path | None) -> list[pytest.Collector]:
    """What the session collects for the benchmark: directory levels down to the scenarios."""
    root = session.config.rootpath
    here = session.config.invocation_params.dir
    inside_rootdir = here.is_relative_to(root)
    parent: pytest.Collector = session
    top: InvocationDirectory | None = None
    chain: list[InvocationDirectory] = []
    if inside_rootdir and here != root:
        parts = here.relative_to(root).parts
        for depth in range(1, len(parts) + 1):
            node = InvocationDirectory.from_parent(parent, path=root.joinpath(*parts[:depth]))
            if top is None:
                top = node
            else:
                chain[-1].children.append(node)
            chain.append(node)
            parent = node
    # Below the rootdir pytest derives the node ids from the paths; elsewhere (the rootdir is the
    # data folder, or a project the user is not in) it would fall back to the bare scenario names.
    modules = scenario_modules(
        parent, scenarios, dataset, explicit_ids=not inside_rootdir, limit=sample_limit(session.config)
    )
    if top is None:
        return list(modules)
    chain[-1].children.extend(modules)
    return [top]


def scenario_modules(
    parent: pytest.Collector, scenarios, dataset: Path | None, explicit_ids: bool, limit: tuple[int, int] | None = None
) -> list[ScenarioModule]:
    """One module per scenario; ``explicit_ids`` gives them ``rmb/<scenario id>`` node ids."""
    modules = []
    for scenario in scenarios:
        module = ScenarioModule.from_parent(
            parent,
            path=parent.config.invocation_params.dir / NODE_ROOT / scenario.id,
            nodeid=f"{NODE_ROOT}/{scenario.id}" if explicit_ids else None,
            scenario=scenario,
            dataset=dataset,
            limit=limit,
        )
        for marker in scenario.markers:
            module.add_marker(marker)
        # Says that a scenario stays on one pytest-xdist worker, so that it is scored in one batch
        # there; pytest_rmb.scheduling enforces it (xdist's own use of the mark fails on pytest 9.2).
        module.add_marker(pytest.mark.xdist_group(scenario.id))
        modules.append(module)
    return modules


def item_identity(item: pytest.Item) -> dict[str, str] | None:
    """Scenario id and kind of an RMB item, as plain values; None for any other test."""
    if not isinstance(item.parent, ScenarioModule) or not isinstance(item, pytest.Function):
        return None
    return {"scenario": item.parent.scenario.id, "kind": item.originalname.removeprefix("test_")}


def selection_plan(items: list[pytest.Item]) -> tuple[dict[str, list[Sample]], list[tuple[pytest.Item, MissingData]]]:
    """The samples of the selected items, by scenario, and the items that stand for missing data."""
    plan: dict[str, list[Sample]] = {}
    missing: list[tuple[pytest.Item, MissingData]] = []
    for item in items:
        if not isinstance(item.parent, ScenarioModule) or not isinstance(item, pytest.Function):
            continue
        value = item.callspec.params["rmb_sample"]
        if isinstance(value, MissingData):
            missing.append((item, value))
        elif isinstance(value, (PairSample, BonSample)):
            plan.setdefault(value.scenario, []).append(value)
    return plan, missing


def select_by_node_prefixes(
    items: list[pytest.Item], prefixes: tuple[str, ...], strict: bool = True
) -> tuple[list[pytest.Item], list[pytest.Item]]:
    """(kept, dropped) items for the ``rmb/...`` node ids given; other tests are kept.

    A node id that selects no item (a sample id that does not exist) is a usage error naming the
    closest item ids. Run before ``-k``/``-m`` deselect anything, so that only a wrong id counts.
    """
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    unused = set(prefixes)
    rmb_ids: list[str] = []
    for item in items:
        if not isinstance(item.parent, ScenarioModule):
            kept.append(item)
            continue
        nodeid = f"{item.parent.relative_id}::{item.name}"
        rmb_ids.append(nodeid)
        matched = [prefix for prefix in prefixes if is_under(nodeid, prefix)]
        unused.difference_update(matched)
        (kept if matched else dropped).append(item)
    for prefix in sorted(unused) if strict else ():
        # pytest still calls pytest_collection_finish with the items (and pytest-xdist sends them
        # to the controller): leave none to run.
        items.clear()
        path = prefix.split("::", 1)[0]
        candidates = [nodeid for nodeid in rmb_ids if nodeid.startswith(f"{path}::")] or rmb_ids
        raise pytest.UsageError(
            f"pytest-rmb: {prefix}: no RMB item has this node id; did you mean {closest(prefix, candidates)}?"
        )
    return kept, dropped


def run_markers(scenarios: Iterable[Scenario]) -> list[str]:
    """Every marker the run's scenarios put on their items: goal, task, kind and the user's own."""
    goals: set[str] = set()
    kinds: set[str] = set()
    others: set[str] = set()
    for scenario in scenarios:
        goal, *rest = scenario.markers
        goals.add(goal)
        kinds.update(scenario.kinds)
        others.update(rest, (marker for kind in scenario.kinds for marker in scenario.kind_markers(kind)))
    # Goals, then kinds, then tasks and the user's own, as a reader looks for them.
    return [*sorted(goals), *sorted(kinds - goals, reverse=True), *sorted(others - goals - kinds)]


# The words of pytest's -m grammar that are no marker names.
_MARK_OPERATORS = frozenset({"and", "or", "not"})

def keyword_hint(expression: str, scenarios: Iterable[Scenario]) -> str:
    """Why ``-k EXPRESSION`` selected no RMB item: each word in it that matches no part of an item's
    name or markers, with the closest such part, then what the names look like."""
    parts: set[str] = set(run_markers(scenarios)) | {"test_pairwise", "test_bon"}
    for scenario in scenarios:
        parts.update(scenario.id.split("/"))
    words = re.findall(r"[^\s()]+", expression)
    lines = [f"rmb: -k {expression!r} selected no RMB item."]
    for word in dict.fromkeys(w for w in words if w not in _MARK_OPERATORS):
        if any(word.lower() in part.lower() for part in parts):
            continue
        close = closest_names(word.lower(), sorted(parts), count=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        lines.append(f"rmb: no RMB item's name or marker contains {word!r}{hint}")
    lines.append("rmb: -k matches parts of item names such as rmb/chat/casual_conversation::test_bon[12] "
                 "and their markers (pytest --collect-only -q lists the names)")
    return "\n".join(lines)


def marker_hint(expression: str, markers: list[str], registered: Iterable[str] = (), keyword: str = "") -> str:
    """Why ``-m EXPRESSION`` selected no RMB item: each name in it that no item carries, with the
    closest marker of the run (markers are case-sensitive: ``Chat`` is not ``chat``), then the
    markers there are. ``registered`` names are the project's own markers: no typo, no hint. A
    ``-k`` ``keyword`` expression deselects too: named beside it, as it may be the cause."""
    # pytest accepts keyword arguments after a name (``mark(arg=1)``): they name no marker.
    names = re.findall(r"[^\s()]+", re.sub(r"\([^()]*\)", " ", expression))
    known = {*markers, *registered}
    by_lower = {marker.lower(): marker for marker in markers}
    also = f" with -k {keyword!r}" if keyword else ""
    lines = [f"rmb: -m {expression!r}{also} selected no RMB item."]
    unknown = list(dict.fromkeys(n for n in names if n not in _MARK_OPERATORS and n not in known))
    if not unknown:
        lines.append("rmb: each name in it is a marker, but no RMB item matches the expression as a whole")
    for name in unknown:
        close = closest_names(name.lower(), by_lower, count=1)
        hint = ""
        if close:
            suggestion = by_lower[close[0]]
            case = " (markers are case-sensitive)" if suggestion.lower() == name.lower() else ""
            hint = f"; did you mean {suggestion!r}?{case}"
        lines.append(f"rmb: no RMB item has the marker {name!r}{hint}")
    lines.append(f"rmb: the markers of this run's items: {', '.join(markers)} (pytest --markers describes them)")
    return "\n".join(lines)
