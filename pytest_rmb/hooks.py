"""Hooks pytest-rmb adds to pytest (registered in plugin.py with ``pytest_addhooks``)."""

from __future__ import annotations

import pytest


@pytest.hookspec
def pytest_rmb_add_backends(config: pytest.Config):
    """Return backends (``pytest_rmb.backends.Backend``) to add to ``--rmb-model``'s schemes.

    For a ``conftest.py`` or a plugin; an installed package can use the ``pytest_rmb.backends``
    entry-point group instead. Each result is a list of backends; a scheme may be defined once.
    """
