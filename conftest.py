# Our own test suite drives the plugin the way users do: through pytester.
import itertools
import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

# No test reaches the model hub: tiny models are built offline. huggingface_hub reads this when it
# is imported, so it must be set before the imports below.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# pytester's in-process runs remove every module a run imported; torch and numpy cannot be
# imported a second time in one process, so load them before any run starts.
import numpy  # noqa: E402,F401
import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401

# The same for what torch and transformers import lazily on first use (a Llama model's classes pull
# in torch.distributed's functional collectives, which register operators once per process): an
# in-process run that first imported them would leave them to be registered a second time.
if torch.distributed.is_available():  # builds without it never register those operators
    import torch.distributed._functional_collectives  # noqa: F401
import transformers.models.llama.modeling_llama  # noqa: E402,F401


def _use_the_http_stack_once() -> None:
    """httpx imports its async stack (httpcore, anyio) on first use, and pytester's in-process runs
    drop the modules first imported inside them: a later run's fresh copy would raise exception
    classes that the first copy's handlers do not catch. One refused request here, before any run,
    keeps a single copy for every run (an artefact of inline runs, not of real ones)."""
    import asyncio
    import socket

    from pytest_rmb.http import HTTPFailure, JSONClient, RetryPolicy

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def refused() -> None:
        async with JSONClient([f"http://127.0.0.1:{port}"], policy=RetryPolicy(retries=0)) as client:
            try:
                await client.get("/v1/models")
            except HTTPFailure:
                pass

    asyncio.run(refused())


_use_the_http_stack_once()


def run_temp(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This run's temporary folder: under pytest-xdist, the one above every worker's own, so the
    workers of one run share what is built in it."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if hasattr(config, "workerinput") else base


@pytest.fixture(scope="session", autouse=True)
def nothing_written_to_the_users_caches(request: pytest.FixtureRequest, tmp_path_factory):
    """The suite writes only under pytest's temporary folders: the score cache and fetched data of
    every run a test starts (inline or in a subprocess) go to a cache folder of this session, never
    the user's ``~/.cache/pytest-rmb``, and the SmolLM2 checkpoint the judge tests convert is built
    once per run in the run's folder (tests/smollm.py; RMB_TEST_CACHE keeps it between sessions)."""
    from tests import smollm

    smollm.keep_models_in(run_temp(request.config, tmp_path_factory) / "test-models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache-home" / "session"))
        yield


_cache_homes = itertools.count()


@pytest.fixture(autouse=True)
def cache_home_of_its_own(monkeypatch: pytest.MonkeyPatch, tmp_path_factory):
    """Each test gets an empty cache folder (made when a run first writes into it): one test's
    cached scores must not answer another's requests."""
    folder = tmp_path_factory.getbasetemp() / "cache-home" / str(next(_cache_homes))
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))


@pytest.fixture(scope="session", autouse=True)
def every_summary_written_validates(tmp_path_factory):
    """After the suite: every run summary any test wrote (under pytest's temporary folders) holds to
    the schema shipped in the package. Hand-made summaries (no schema_version) are not the plugin's."""
    yield
    import json

    import jsonschema

    from pytest_rmb.summary import SCHEMA_VERSION, shipped_schema

    validator = jsonschema.Draft202012Validator(shipped_schema())
    invalid = []
    for path in tmp_path_factory.getbasetemp().rglob("*.json"):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and document.get("schema_version") == SCHEMA_VERSION:
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
            if errors:
                invalid.append(f"{path}: {errors[:3]}")
    assert not invalid, "summaries that do not hold to the shipped schema:\n" + "\n".join(invalid)


@pytest.fixture
def stubs(tmp_path_factory):
    """start(*flags): a stand-in judge that prefers the longer answer (tests/judge_stub.py), stopped
    after the test."""
    from tests.judge_stub import StubServer

    started: list[StubServer] = []
    folder = tmp_path_factory.mktemp("stub-logs")

    def start(*flags: str) -> StubServer:
        server = StubServer(folder, "longer", *flags).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
