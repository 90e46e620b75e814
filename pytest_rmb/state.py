"""Typed keys for the run's state in ``config.stash`` (no module globals, no private attributes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_rmb.options import RunSettings

if TYPE_CHECKING:  # the session module imports the modules that read these keys
    from pytest_rmb.session import RMBSession

SETTINGS = pytest.StashKey[RunSettings]()
# The RMBSession plugin object of a benchmark run.
SESSION = pytest.StashKey["RMBSession"]()
NODE_PREFIXES = pytest.StashKey[tuple[str, ...]]()
