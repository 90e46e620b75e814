"""Typed keys for the run's state in ``config.stash`` (no module globals, no private attributes)."""

from __future__ import annotations

import pytest

from pytest_rmb.options import RunSettings

SETTINGS = pytest.StashKey[RunSettings]()
# The RMBSession plugin object of a benchmark run (typed loosely: session.py imports this module's
# neighbours, and the stash key must not import it back).
SESSION = pytest.StashKey[object]()
NODE_PREFIXES = pytest.StashKey[tuple[str, ...]]()
