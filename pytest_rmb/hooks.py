"""Hooks pytest-rmb adds to pytest (registered in plugin.py with ``pytest_addhooks``)."""

from __future__ import annotations

import pytest


@pytest.hookspec
def pytest_rmb_add_backends(config: pytest.Config):
    """Return backends (``pytest_rmb.backends.Backend``) to add to ``--rmb-model``'s schemes.

    For a ``conftest.py`` or a plugin; an installed package can use the ``pytest_rmb.backends``
    entry-point group instead. Each result is a list of backends; a scheme may be defined once.
    """


@pytest.hookspec
def pytest_rmb_update_summary(config: pytest.Config, summary: dict):
    """Change the run's summary before it is written and shown: add a run id, a git sha, a note.

    Called on the process that aggregates (the controller under pytest-xdist), once per run, with
    the summary as built (``pytest_rmb.summary.RunSummary``, the ``--rmb-json`` document), gates
    included. Change it in place; the return value is ignored. Keys of your own are kept as they
    are; change pytest-rmb's own keys at your peril: gates have been decided already, and later
    runs read this file as their baseline.
    """
