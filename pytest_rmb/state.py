"""Every key of the run's state in ``config.stash`` and ``item.stash``, and nothing else.

Typed keys instead of module globals or private attributes. They live here, at the bottom of the
house, so that any module can reach the run's objects without importing the
module that defines them (the types are named for the type checker only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_rmb.outcomes import Outcome
    from pytest_rmb.session import RMBSession

# The benchmark run's session plugin: registered on every process of a run with --rmb-model.
SESSION: pytest.StashKey[RMBSession] = pytest.StashKey()
# The ``rmb/...`` node ids given on the command line, matched against items after collection.
NODE_PREFIXES: pytest.StashKey[tuple[str, ...]] = pytest.StashKey()
# On an item: what its sample scored, read by the session's makereport hook.
OUTCOME: pytest.StashKey[Outcome] = pytest.StashKey()
