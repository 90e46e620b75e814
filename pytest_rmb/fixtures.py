"""Session fixtures: the model under test and the engine that scores with it.

Both are session scoped, so a process loads the model once. ``rmb_model`` is the extension point:
a ``conftest.py`` fixture of the same name replaces it (see README.md).
"""

from __future__ import annotations

import pytest

from pytest_rmb.cache import ScoreCache
from pytest_rmb.engine import DEFAULT_BATCH_TOKENS, UNLIMITED, Engine
from pytest_rmb.progress import progress_for
from pytest_rmb.scorers import ScorerLoadError, load_scorer
from pytest_rmb.state import ENGINE, PLAN, SETTINGS


@pytest.fixture(scope="session")
def rmb_model(pytestconfig: pytest.Config):
    """The reward model named by --rmb-model, as a scorer (anything with ``score(batch)``)."""
    settings = pytestconfig.stash[SETTINGS].scorer
    try:
        with progress_for(pytestconfig).loading(settings.model):
            return load_scorer(settings)
    except ScorerLoadError as exc:
        # Every item needs the model: stop the run with one message instead of one error per item.
        pytest.exit(f"pytest-rmb: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def rmb_engine(rmb_model, pytestconfig: pytest.Config) -> Engine:
    """Scores each scenario's selected samples in batches on first use; items read the results."""
    settings = pytestconfig.stash[SETTINGS]
    # The token budget applies to scorers that count tokens; the baselines count characters.
    if callable(getattr(rmb_model, "cost", None)):
        batch_tokens = settings.batch_tokens or getattr(rmb_model, "batch_tokens", DEFAULT_BATCH_TOKENS)
    else:
        batch_tokens = UNLIMITED
    # Only scorers that can say what their scores depend on are cached; the baselines are
    # cheaper to recompute than to look up.
    fingerprint = getattr(rmb_model, "fingerprint", None)
    cache = ScoreCache(settings.cache_dir, fingerprint()) if settings.cache_dir and callable(fingerprint) else None
    engine = Engine(
        rmb_model,
        pytestconfig.stash.get(PLAN, {}),
        max_batch_size=settings.batch_size,
        max_batch_cost=batch_tokens,
        progress=progress_for(pytestconfig),
        cache=cache,
    )
    pytestconfig.stash[ENGINE] = engine
    return engine
