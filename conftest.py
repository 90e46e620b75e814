# Our own test suite drives the plugin the way users do: through pytester.
import os

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
