"""The RMB benchmark as pytest tests.

Every scenario collects this module (see collection.py); the session's ``pytest_generate_tests``
gives each test one parameter per sample of that scenario's data file (session.py).
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

from pytest_rmb.data import BadData
from pytest_rmb.engine import ScoringError
from pytest_rmb.models import RunStopped
from pytest_rmb.state import OUTCOME, SESSION

_OUR_CODE = Path(__file__).resolve().parent
# Frames of the model's own code shown under the first failed item of a scenario.
_FRAMES_SHOWN = 6


def model_frames(exc: BaseException) -> str:
    """Where the model failed: its frames outside pytest-rmb, one line each, so that a user's
    scorer shows its own file and line without a traceback through the engine. A long chain (an
    error deep in torch) keeps its outermost frame, where the model's code called in, and the
    innermost ones."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if not Path(frame.filename).resolve().is_relative_to(_OUR_CODE)]
    if len(frames) > _FRAMES_SHOWN:
        frames = [frames[0], *frames[-(_FRAMES_SHOWN - 1):]]
    return "".join(f"\n  {frame.filename}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}"
                   for frame in frames)


def _judge(sample, request: pytest.FixtureRequest) -> None:
    if isinstance(sample, BadData):
        pytest.fail(sample.message, pytrace=False)
    # Resolving a session fixture costs as much as a trivial test; 18,000 items ask for the
    # engine, so look it up once per process and resolve the fixture only the first time.
    engine = request.config.stash[SESSION].engine or request.getfixturevalue("rmb_engine")
    exc: BaseException | None = None
    try:
        outcome = engine.outcome(sample)
    except ScoringError as error:
        exc, failure = error, str(error)
    except Exception as error:  # noqa: BLE001 - the model's own failure, reported compactly
        exc = error
        # Every item of the scenario gets one compact line; the first one also the model's own
        # frames: a full traceback would run through the engine and the backend, not the user's code.
        failure = f"scenario {sample.scenario} could not be scored: {type(exc).__name__}: {exc}{model_frames(exc)}"
    else:
        failure = outcome.error or ""
    if failure:
        stopped = _run_stopped(exc)
        if stopped is not None:
            # Like -x: the items left are not run (each would fail the same way, or spend), and the
            # controller reports the run as partial with this reason.
            request.session.shouldstop = f"pytest-rmb: {stopped}"
        # Outside the except block: the item's report is this one line, not the chain of causes.
        pytest.fail(failure, pytrace=False)
    # A miss is turned into a compact failed report by the session's makereport hook.
    request.node.stash[OUTCOME] = outcome


def _run_stopped(exc: BaseException | None) -> RunStopped | None:
    """The :class:`RunStopped` behind a failure (the engine wraps a backend's in a ScoringError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RunStopped):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@pytest.mark.pairwise
def test_pairwise(rmb_sample, request):
    _judge(rmb_sample, request)


@pytest.mark.bon
def test_bon(rmb_sample, request):
    _judge(rmb_sample, request)
