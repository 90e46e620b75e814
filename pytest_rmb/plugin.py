"""pytest hooks of pytest-rmb. Options, markers and node selection; with ``--rmb-model`` the run
itself belongs to the :class:`~pytest_rmb.session.RMBSession` registered here on every process,
and its results to the :class:`~pytest_rmb.controller.RunController` on the one that aggregates."""

from __future__ import annotations

import gc
import os

import pytest

from pytest_rmb.collection import select_by_node_prefixes
from pytest_rmb.controller import RunController
from pytest_rmb.fixtures import rmb_engine, rmb_model  # noqa: F401 (registered as plugin fixtures)
from pytest_rmb.nodeids import NodeIdError, split_node_args
from pytest_rmb.options import add_options, cacheprovider_writes_into_dataset, resolve
from pytest_rmb.scenarios import RegistryError, all_markers, join_spaced_words
from pytest_rmb.session import RMBSession
from pytest_rmb.state import NODE_PREFIXES, SESSION

# The cyclic GC's young-generation threshold during an RMB run (see pytest_configure).
RUN_GC_THRESHOLD = 7000


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_rmb import hooks

    pluginmanager.add_hookspecs(hooks)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    try:
        markers = all_markers()
    except RegistryError as exc:
        # A scenario definition shipped with the plugin (or a local edit of one) that cannot be used.
        raise pytest.UsageError(f"pytest-rmb: invalid scenario definition: {exc}") from None
    for name, description in markers.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    settings = resolve(config)
    if settings is None:
        return
    session = RMBSession(config, settings)
    config.stash[SESSION] = session
    config.pluginmanager.register(session, "rmb-session")
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(RunController(config, settings), "rmb-controller")
    # Undoes the freeze in RMBSession.pytest_collection_finish; registered this early so that it
    # runs after pytest's own end-of-session collections (cleanups run last-in, first-out).
    config.add_cleanup(gc.unfreeze)
    # Reading the data and collecting ~18,000 items allocates in bulk, and CPython's default young
    # generation of 700 objects then runs ~1,700 collections over all of RMB (1.2 s of CPU with the
    # length baseline); 7,000 runs ~160 (0.5 s). Only for an RMB run, restored when it ends.
    before = gc.get_threshold()
    if before[0] and before[0] < RUN_GC_THRESHOLD:
        gc.set_threshold(RUN_GC_THRESHOLD, *before[1:])
        config.add_cleanup(lambda: gc.set_threshold(*before))
    if config.option.keyword:
        config.option.keyword = join_spaced_words(config.option.keyword)
    try:
        paths, prefixes = split_node_args(list(config.args), settings.scenarios)
    except NodeIdError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[NODE_PREFIXES] = prefixes
    # With --rmb-model the benchmark is the run: the user's own tests join only when named.
    config.args = paths if config.args_source == pytest.Config.ArgsSource.ARGS else []
    if _xdist_dist_unchosen(config):
        config.option.dist = "loadgroup"


def _xdist_dist_unchosen(config: pytest.Config) -> bool:
    """-n was given but --dist was not, so xdist would spread a scenario over workers."""
    if not getattr(config.option, "numprocesses", None) or config.option.dist != "load":
        return False
    given = [*config.invocation_params.args, *os.environ.get("PYTEST_ADDOPTS", "").split()]
    return not any(str(arg).startswith(("--dist", "-d")) for arg in given)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # First, so that a node id that selects nothing is told from one whose items -k/-m deselect.
    prefixes = config.stash.get(NODE_PREFIXES, ())
    if not prefixes:
        return
    # A worker that stopped on a wrong sample id would only crash; the controller then reports
    # that nothing ran (exit 5). A single process names the closest ids (exit 4).
    kept, dropped = select_by_node_prefixes(items, prefixes, strict=not hasattr(config, "workerinput"))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    # pytest-rmb never writes into the data folder. pytest's cache would land there, and its
    # place is fixed by now: run as with -p no:cacheprovider (--lf, --nf and --sw are then off).
    if cacheprovider_writes_into_dataset(early_config, parser, args):
        early_config.pluginmanager.set_blocked("stepwise")
        early_config.pluginmanager.set_blocked("cacheprovider")
