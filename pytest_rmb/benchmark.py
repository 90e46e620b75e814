"""The RMB benchmark as pytest tests.

Every scenario collects this module (see collection.py); ``pytest_generate_tests`` below gives each
test one parameter per sample of that scenario's data file.
"""

from __future__ import annotations

import pytest

from pytest_rmb.collection import BadData, ScenarioModule
from pytest_rmb.data import BON, PAIRWISE
from pytest_rmb.engine import ScoringError
from pytest_rmb.results import OUTCOME_KEY
from pytest_rmb.session import SESSION

_KIND_OF_TEST = {"test_pairwise": PAIRWISE, "test_bon": BON}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.definition.getparent(ScenarioModule)
    assert module is not None, "the benchmark module is collected only under a scenario"
    values, ids, marks = module.parameters(_KIND_OF_TEST[metafunc.function.__name__])
    if marks:
        values = [pytest.param(v, id=i, marks=marks) for v, i in zip(values, ids)]
        metafunc.parametrize("rmb_sample", values)
    else:
        metafunc.parametrize("rmb_sample", values, ids=ids)


def _judge(sample, request: pytest.FixtureRequest) -> None:
    if isinstance(sample, BadData):
        pytest.fail(sample.message, pytrace=False)
    # Resolving a session fixture costs as much as a trivial test; 18,000 items ask for the
    # engine, so look it up once per process and resolve the fixture only the first time.
    engine = request.config.stash[SESSION].engine or request.getfixturevalue("rmb_engine")
    try:
        outcome = engine.outcome(sample)
    except ScoringError as exc:
        failure = str(exc)
    except Exception as exc:  # noqa: BLE001 - the model's own failure, reported as one line
        # Every item of the scenario gets one compact line, the first included: the traceback
        # would run through the engine and the backend, not through the user's test.
        failure = f"scenario {sample.scenario} could not be scored: {type(exc).__name__}: {exc}"
    else:
        failure = outcome.error or ""
    if failure:
        # Outside the except block: the item's report is this one line, not the chain of causes.
        pytest.fail(failure, pytrace=False)
    # A miss is turned into a compact failed report by the session's makereport hook.
    request.node.stash[OUTCOME_KEY] = outcome


@pytest.mark.pairwise
def test_pairwise(rmb_sample, request):
    _judge(rmb_sample, request)


@pytest.mark.bon
def test_bon(rmb_sample, request):
    _judge(rmb_sample, request)
