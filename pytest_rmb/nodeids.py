"""The node-id grammar of RMB items: ``rmb/<task>/<scenario>::test_<kind>[<uid>]``. Pure functions.

Node ids are how a user names a scenario, a task or one sample on the command line, and how the
xdist scheduler and the controller tell RMB items from other tests; both sides read them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pytest_rmb.data import uid_sort_key
from pytest_rmb.parsers import closest_names
from pytest_rmb.scenarios import Scenario, registry

NODE_ROOT = "rmb"
TEST_NAMES = ("test_pairwise", "test_bon")


class NodeIdError(ValueError):
    """A node id on the command line that names nothing the run has; says the closest ones."""


def split_node_args(args: list[str], scenarios: Sequence[Scenario] | None = None) -> tuple[list[str], tuple[str, ...]]:
    """Separate ``rmb/...`` node ids (which name no file) from the paths pytest should collect.

    A node id naming no scenario, task or test of the run's scenarios (default: the registry) is a
    usage error that names the closest ones: selecting nothing would otherwise pass for a run.
    """
    known = registry() if scenarios is None else scenarios
    paths, prefixes = [], []
    for arg in args:
        if arg == NODE_ROOT or arg.startswith(f"{NODE_ROOT}/"):
            prefix = arg
        elif (printed := _as_printed_from_outside_rootdir(arg)) is not None:
            prefix = printed
        else:
            paths.append(arg)
            continue
        path, sep, test = prefix.partition("::")
        path = path.rstrip("/") or NODE_ROOT
        _check_node_id(arg, path, test if sep else None, known)
        prefixes.append(path + sep + test)
    return paths, tuple(prefixes)


def _check_node_id(typed: str, path: str, test: str | None, scenarios: Sequence[Scenario]) -> None:
    scenario_paths = [f"{NODE_ROOT}/{s.id}" for s in scenarios]
    task_paths = sorted({p.rsplit("/", 1)[0] for p in scenario_paths})
    valid = scenario_paths if test is not None else [NODE_ROOT, *task_paths, *scenario_paths]
    if path not in valid:
        task = path.rsplit("/", 1)[0]
        candidates = [p for p in scenario_paths if p.startswith(f"{task}/")] if task in task_paths else []
        if not candidates:
            candidates = scenario_paths if test is not None else [*task_paths, *scenario_paths]
        what = "scenario" if test is not None else "scenario or task"
        raise NodeIdError(
            f"pytest-rmb: {typed}: no RMB {what} has this node id; did you mean "
            f"{closest(path, candidates)}? (ids look like rmb/<task>/<scenario>; "
            "--collect-only -q lists them)"
        )
    if test is None:
        return
    name = test.split("[", 1)[0]
    if name not in TEST_NAMES:
        raise NodeIdError(
            f"pytest-rmb: {typed}: RMB scenarios have no test {name!r}; did you mean "
            f"{closest(f'{path}::{name}', [f'{path}::{t}' for t in TEST_NAMES])}?"
        )


def closest(typed: str, candidates: list[str]) -> str:
    """The three node ids closest to a mistyped one, for "did you mean ...?": always some."""
    return ", ".join(closest_names(typed, candidates, cutoff=0.0))


def is_under(nodeid: str, prefix: str) -> bool:
    return nodeid == prefix or nodeid.startswith((f"{prefix}/", f"{prefix}::", f"{prefix}["))


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


def nodeid_sort_key(nodeid: str) -> tuple:
    """Node ids in the order of the run: by scenario and test, then by uid in natural order
    (``[p2]`` before ``[p10]``), as the items themselves are collected."""
    head, bracket, param = nodeid.partition("[")
    uid = uid_sort_key(param.removesuffix("]")) if bracket else ((), "")
    return head, uid


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
