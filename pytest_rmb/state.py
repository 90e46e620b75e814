"""Typed keys for the run's state in ``config.stash`` (no module globals, no private attributes)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pytest_rmb.data import Sample
from pytest_rmb.engine import Engine
from pytest_rmb.options import RunSettings
from pytest_rmb.results import RunResults

SETTINGS = pytest.StashKey[RunSettings]()
RESULTS = pytest.StashKey[RunResults]()
# Scenario id -> the samples of its items selected in this process; what the engine scores.
PLAN = pytest.StashKey[dict[str, Sequence[Sample]]]()
ENGINE = pytest.StashKey[Engine]()
SUMMARY = pytest.StashKey[dict]()
NODE_PREFIXES = pytest.StashKey[tuple[str, ...]]()
