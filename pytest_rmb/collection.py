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

from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_rmb.data import DataFileError, Sample, data_file, load_samples
from pytest_rmb.scenarios import Scenario

NODE_ROOT = "rmb"


@dataclass(frozen=True)
class MissingData:
    """Stands in for the samples of a scenario whose data file is absent."""

    scenario: str
    kind: str
    file: str


@dataclass(frozen=True)
class BadData:
    """Stands in for the samples of a scenario whose data file is invalid."""

    scenario: str
    kind: str
    file: str
    message: str


class ScenarioModule(pytest.Module):
    def __init__(self, *, scenario: Scenario, dataset: Path, **kwargs):
        super().__init__(**kwargs)
        self.scenario = scenario
        self.dataset = dataset

    @property
    def relative_id(self) -> str:
        """The node id's path part as seen from the invocation dir: ``rmb/<scenario id>``."""
        return f"{NODE_ROOT}/{self.scenario.id}"

    def _getobj(self):
        # The path is virtual; every scenario collects the same test functions.
        from pytest_rmb import benchmark

        return benchmark

    def parameters(self, kind: str) -> tuple[list[object], list[str], list]:
        """(values, ids, marks) for the ``rmb_sample`` parameter of the ``kind`` test."""
        relative = self.scenario.file(kind)
        path = data_file(self.dataset, relative)
        if path is None:
            missing = MissingData(self.scenario.id, kind, relative)
            reason = f"missing data file: {relative} (not found under {self.dataset})"
            return [missing], ["missing-data"], [pytest.mark.skip(reason=reason)]
        try:
            samples: list[Sample] = load_samples(path, kind, self.scenario.id)
        except DataFileError as exc:
            return [BadData(self.scenario.id, kind, relative, str(exc))], ["data-error"], []
        return samples, [s.uid for s in samples], []


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


def rmb_collectors(session: pytest.Session, scenarios, dataset: Path) -> list[pytest.Collector]:
    """What the session collects for the benchmark: directory levels down to the scenarios."""
    root = session.config.rootpath
    here = session.config.invocation_params.dir
    inside_rootdir = here.is_relative_to(root)
    parent: pytest.Collector = session
    top: InvocationDirectory | None = None
    if inside_rootdir and here != root:
        parts = here.relative_to(root).parts
        for depth in range(1, len(parts) + 1):
            node = InvocationDirectory.from_parent(parent, path=root.joinpath(*parts[:depth]))
            if top is None:
                top = node
            else:
                parent.children.append(node)
            parent = node
    # Below the rootdir pytest derives the node ids from the paths; elsewhere (the rootdir is the
    # data folder, or a project the user is not in) it would fall back to the bare scenario names.
    modules = scenario_modules(parent, scenarios, dataset, explicit_ids=not inside_rootdir)
    if top is None:
        return modules
    parent.children.extend(modules)
    return [top]


def scenario_modules(parent: pytest.Collector, scenarios, dataset: Path, explicit_ids: bool) -> list[ScenarioModule]:
    """One module per scenario; ``explicit_ids`` gives them ``rmb/<scenario id>`` node ids."""
    modules = []
    for scenario in scenarios:
        module = ScenarioModule.from_parent(
            parent,
            path=parent.config.invocation_params.dir / NODE_ROOT / scenario.id,
            nodeid=f"{NODE_ROOT}/{scenario.id}" if explicit_ids else None,
            scenario=scenario,
            dataset=dataset,
        )
        for marker in scenario.markers:
            module.add_marker(marker)
        # Says that a scenario stays on one pytest-xdist worker, so that it is scored in one batch
        # there; pytest_rmb.scheduling enforces it (xdist's own use of the mark fails on pytest 9.2).
        module.add_marker(pytest.mark.xdist_group(scenario.id))
        modules.append(module)
    return modules


def selection_plan(items: list[pytest.Item]) -> tuple[dict[str, list[Sample]], list[tuple[pytest.Item, MissingData]]]:
    """The samples of the selected items, by scenario, and the items that stand for missing data."""
    plan: dict[str, list[Sample]] = {}
    missing = []
    for item in items:
        if not isinstance(item.parent, ScenarioModule):
            continue
        value = item.callspec.params["rmb_sample"]
        if isinstance(value, MissingData):
            missing.append((item, value))
        elif not isinstance(value, BadData):
            plan.setdefault(value.scenario, []).append(value)
    return plan, missing


def split_node_args(args: list[str]) -> tuple[list[str], tuple[str, ...]]:
    """Separate ``rmb/...`` node ids (which name no file) from the paths pytest should collect."""
    paths, prefixes = [], []
    for arg in args:
        if arg == NODE_ROOT or arg.startswith(f"{NODE_ROOT}/"):
            prefixes.append(arg)
        elif (printed := _as_printed_from_outside_rootdir(arg)) is not None:
            prefixes.append(printed)
        else:
            paths.append(arg)
    return paths, tuple(prefixes)


def matches_node_prefix(item: pytest.Item, prefixes: tuple[str, ...]) -> bool:
    """True when the RMB item is, or lies under, one of the given ``rmb/...`` node ids."""
    nodeid = f"{item.parent.relative_id}::{item.name}"
    for prefix in prefixes:
        if nodeid == prefix or nodeid.startswith((f"{prefix}/", f"{prefix}::", f"{prefix}[")):
            return True
    return False


def display_nodeid(nodeid: str) -> str:
    """An RMB node id as typed from the invocation dir: no rootdir prefix, no xdist group."""
    path, sep, test = nodeid.partition("::")
    start = path.rfind(f"{NODE_ROOT}/")
    if start < 0:
        return nodeid
    return f"{path[start:]}{sep}{test.split('@', 1)[0]}"


def scenario_and_kind(nodeid: str) -> tuple[str, str] | None:
    """(scenario id, kind) of an RMB item's node id, or None for any other test."""
    path, _, test = nodeid.partition("::")
    parts = path.split("/")
    if len(parts) < 3 or parts[-3] != NODE_ROOT or not test.startswith("test_"):
        return None
    return f"{parts[-2]}/{parts[-1]}", test.split("[", 1)[0].removeprefix("test_")


def _as_printed_from_outside_rootdir(arg: str) -> str | None:
    """``../project/rmb/chat/discussion::test_bon[3]`` -> ``rmb/chat/discussion::test_bon[3]``.

    Started from a directory outside the rootdir, pytest prints node ids relative to the rootdir's
    place (``--rmb-data /data/RMB_dataset`` alone can make that folder the rootdir), so a node id
    copied from ``-v`` output carries such a prefix; one that names no existing path is ours.
    """
    path, sep, test = arg.partition("::")
    parts = path.split("/")
    if parts[0] != ".." or NODE_ROOT not in parts or Path(path).exists():
        return None
    return "/".join(parts[parts.index(NODE_ROOT):]) + sep + test
