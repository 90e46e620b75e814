"""Scenarios as pytest collectors.

Each scenario is a ``pytest.Module`` collector over ``pytest_rmb.benchmark`` at the virtual path
``<rootdir>/rmb/<scenario id>``: node ids read ``rmb/code/data_management::test_pairwise[848]``,
pytest prints one progress line per scenario, ``--lf`` and conftest lookup work as for files under
the rootdir, and the items stay real ``pytest.Function``s that can use fixtures.
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


def scenario_modules(session: pytest.Session, scenarios, dataset: Path) -> list[ScenarioModule]:
    modules = []
    for scenario in scenarios:
        module = ScenarioModule.from_parent(
            session,
            path=session.config.rootpath / NODE_ROOT / scenario.id,
            scenario=scenario,
            dataset=dataset,
        )
        for marker in scenario.markers:
            module.add_marker(marker)
        # Keeps a scenario on one pytest-xdist worker under --dist loadgroup, so that it is
        # scored in one batch there.
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
        else:
            paths.append(arg)
    return paths, tuple(prefixes)


def matches_node_prefix(nodeid: str, prefixes: tuple[str, ...]) -> bool:
    """True when the item is, or lies under, one of the given ``rmb/...`` node ids."""
    for prefix in prefixes:
        if nodeid == prefix or nodeid.startswith((f"{prefix}/", f"{prefix}::", f"{prefix}[")):
            return True
    return False
