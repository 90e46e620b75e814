"""Typed keys for the run's state in ``config.stash`` (no module globals, no private attributes)."""

from __future__ import annotations

import pytest

# The RMBSession plugin object of a benchmark run is under pytest_rmb.session.SESSION.
NODE_PREFIXES = pytest.StashKey[tuple[str, ...]]()
