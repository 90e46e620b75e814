"""Session fixtures: the model under test and the engine that does the work with it.

Both are session scoped, so a process loads the model once, and only when the score cache leaves
it something to do: a backend that can is only prepared (tokenizer, config, settings: enough for
the cache's fingerprint and keys), and its weights load, or its server is contacted, once the
engine knows what the cache does not hold. ``rmb_model`` is the extension point:
a ``conftest.py`` fixture of the same name replaces it with any pointwise or pairwise object (see
docs/how-to/own-model.md).
"""

from __future__ import annotations

from typing import NoReturn

import pytest

from pytest_rmb.backends import ModelLoadError, load_model
from pytest_rmb.cache import CacheError, ScoreCache
from pytest_rmb.engine import Engine, PairwiseEngine, warn_by_warning
from pytest_rmb.models import PairwiseModel, as_model
from pytest_rmb.progress import progress_for
from pytest_rmb.state import SESSION


def stop_before_scoring(request: pytest.FixtureRequest, exc: ModelLoadError | CacheError) -> NoReturn:
    """End the run at a model that cannot load (or a judge whose server cannot serve it), or a
    score cache that cannot be written: exit status 4 and an error summary. An xdist worker cannot
    ``pytest.exit`` (xdist takes that for a crash, INTERNALERROR): it fails the item and stops, and
    its controller ends the run so."""
    session = request.config.stash[SESSION]
    session.load_error = str(exc)
    if session.is_worker:
        request.session.shouldstop = f"pytest-rmb: {exc}"
        pytest.fail(f"pytest-rmb: {exc}", pytrace=False)
    pytest.exit(f"pytest-rmb: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def rmb_model(pytestconfig: pytest.Config, request: pytest.FixtureRequest):
    """The reward model named by --rmb-model: a pointwise or pairwise model."""
    session = pytestconfig.stash[SESSION]
    settings = session.settings
    try:
        with progress_for(pytestconfig).loading(settings.model.model):
            return load_model(settings.model, settings.backend, lazy=True)
    except ModelLoadError as exc:
        # Every item needs the model: stop the run with one message instead of one error per item,
        # and leave an error summary, never one that a later gate could take for a good run.
        stop_before_scoring(request, exc)


@pytest.fixture(scope="session")
def rmb_engine(rmb_model, pytestconfig: pytest.Config, request: pytest.FixtureRequest):
    """Does each scenario's work in batches on first use; items read the outcomes."""
    session = pytestconfig.stash[SESSION]
    settings = session.settings
    model = as_model(rmb_model)
    # Only models that can say what their results depend on are cached; the baselines are
    # cheaper to recompute than to look up.
    fingerprint = model.fingerprint()
    cache = None
    if settings.cache_dir and fingerprint:
        # Before the model loads and before the first request: a cache that cannot take the
        # results would have them paid for and then lost.
        try:
            cache = ScoreCache(settings.cache_dir, fingerprint, model=settings.model.model)
        except CacheError as exc:
            stop_before_scoring(request, exc)
    progress = progress_for(pytestconfig)
    # A trouble that costs no result (a failed cache write): a line on the terminal as it happens;
    # an xdist worker has no terminal of its own, and sends a warning, which xdist forwards.
    warn = warn_by_warning if session.is_worker else lambda line: session.announce(f"rmb: warning: {line}")
    engine: Engine | PairwiseEngine
    if isinstance(model, PairwiseModel):
        engine = PairwiseEngine(model, session.plan, goal_of={s.id: s.goal for s in settings.scenarios},
                                max_batch_size=settings.batch_size, max_batch_cost=settings.batch_tokens,
                                progress=progress, cache=cache, warn=warn)
    else:
        engine = Engine(model, session.plan, max_batch_size=settings.batch_size,
                        max_batch_cost=settings.batch_tokens, progress=progress, cache=cache, warn=warn)
    session.engine = engine
    if not model.loaded and engine.has_work():
        try:
            with progress.loading(settings.model.model):
                model.load()
        except ModelLoadError as exc:
            stop_before_scoring(request, exc)
    # After loading: what the loaded model says of itself (device, prefix sharing) goes in the summary.
    session.model_loaded(model)
    if isinstance(engine, PairwiseEngine) and isinstance(model, PairwiseModel):
        # Before the first request: what the run is about to ask for (and may cost). A judge
        # checks its server here (in each xdist worker too), only when the cache leaves
        # something to ask.
        try:
            line = model.preview(engine.planned_requests())
        except ModelLoadError as exc:
            stop_before_scoring(request, exc)
        if line and not session.is_worker:
            session.announce(f"rmb: {line}")
    return engine
