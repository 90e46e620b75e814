# Our own test suite drives the plugin the way users do: through pytester.
import os

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
