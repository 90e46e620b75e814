"""The OpenAI-compatible judge against a local stub server with a fixed latency, side by side with
the ideal, and a rerun from the cache side by side with the ``length`` baseline.

    python bench/bench_judge.py [--comparisons 2000] [--concurrency 32] [--latency 0.05]
                                [--data sample|PATH] [-m MARKEXPR] [--repeats 3]

1. Throughput: ``--comparisons`` distinct comparisons through ``OpenAIJudge.compare`` in one call
   (order=fixed: one request each, and order=both on half as many: the same request count) against
   the stub answering every request after ``--latency`` seconds. Ideal = requests x latency /
   concurrency. Target: <= 1.1x. Beside it, the floor of the machine and the HTTP library: the same
   request bodies (rendered beforehand) posted with a bare ``httpx.AsyncClient`` at the same
   concurrency, with nothing of pytest-rmb in the loop.
2. Cache: ``pytest --rmb-model openai:stub-judge`` over the selection once to fill a fresh cache,
   then reruns from the cache alternated with ``pytest --rmb-model length`` on the same selection,
   each in its own process, the best of ``--repeats`` each. Target: <= 1.2x.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_rmb.backends import ModelSettings  # noqa: E402
from pytest_rmb.backends.openai import BACKEND  # noqa: E402
from pytest_rmb.data import Message  # noqa: E402
from pytest_rmb.models import PairRequest  # noqa: E402
from tests.judge_stub import StubServer  # noqa: E402


def comparisons(count: int) -> list[PairRequest]:
    """Distinct comparisons of realistic size (a question, two answers of a few hundred characters)."""
    requests = []
    for i in range(count):
        question = (Message("user", f"Question {i}: explain how a hash map handles collisions, briefly."),)
        first = f"Answer {i}. " + "Chaining keeps a list per bucket; lookups walk the list. " * (3 + i % 5)
        second = f"Answer {i}b. " + "Open addressing probes the next free slot. " * (2 + i % 7)
        requests.append(PairRequest(question, first, second, "helpfulness"))
    return requests


def throughput(stub: StubServer, count: int, concurrency: int, latency: float, order: str) -> tuple[float, int, float]:
    args = BACKEND.parse_args([("base_url", stub.base_url), ("concurrency", str(concurrency)), ("order", order),
                               ("logprobs", "false")])
    model = BACKEND.load(ModelSettings("openai:stub-judge", args=args))
    model.check_server()  # what a run does before its first request, outside the timed part
    requests = comparisons(count)
    started, cpu = time.perf_counter(), time.process_time()
    verdicts = model.compare(requests)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert len(verdicts) == count and all(v.error is None for v in verdicts)
    sent = int(model.take_counters().get("requests", 0))
    model.close()
    return elapsed, sent, cpu


def bare_httpx(stub: StubServer, count: int, concurrency: int) -> float:
    """Seconds for the same requests through a bare httpx client: what any httpx-based client
    (the openai SDK's included) can do on this machine against this stub."""
    import asyncio
    import json

    import httpx

    from pytest_rmb.judging.prompts import judge_messages, load_prompt

    prompt = load_prompt("pair-v2")
    bodies = [json.dumps({"model": "stub-judge", "temperature": 0, "max_tokens": 1024,
                          "messages": judge_messages(prompt, r.conversation, r.first, r.second, r.goal)}).encode()
              for r in comparisons(count)]

    async def run() -> float:
        slots = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=stub.base_url, limits=limits) as client:

            async def one(body: bytes) -> None:
                async with slots:
                    response = await client.post("/chat/completions", content=body,
                                                 headers={"Content-Type": "application/json"})
                    response.json()

            started = time.perf_counter()
            await asyncio.gather(*(one(body) for body in bodies))
            return time.perf_counter() - started

    return asyncio.run(run())


def pytest_run(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"pytest {' '.join(args)} exited {completed.returncode}: {completed.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comparisons", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--data", default="sample")
    parser.add_argument("-m", dest="markexpr", default=None, help="pytest -m expression for the cache part")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        print(f"CPU cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
        # No request log for the throughput part: writing it is the stub's work, not the judge's.
        with StubServer(work, "longer", "--latency", str(options.latency), log=False) as stub:
            for order, count in (("fixed", options.comparisons), ("both", options.comparisons // 2)):
                elapsed, sent, cpu = throughput(stub, count, options.concurrency, options.latency, order)
                ideal = sent * options.latency / options.concurrency
                print(f"throughput order={order}: {count} comparisons, {sent} requests at concurrency "
                      f"{options.concurrency}, {options.latency * 1000:.0f} ms each: {elapsed:.2f} s, ideal "
                      f"{ideal:.2f} s, ratio {elapsed / ideal:.3f} (target <= 1.1)")
                # The client keeps up only if one request costs it less CPU than latency/concurrency;
                # on a loaded machine the ratio above measures the machine, this says why.
                print(f"  client CPU {cpu / sent * 1000:.2f} ms per request; keeping {options.concurrency} in "
                      f"flight needs < {options.latency / options.concurrency * 1000:.2f} ms")
            bare = bare_httpx(stub, options.comparisons, options.concurrency)
            ideal = options.comparisons * options.latency / options.concurrency
            print(f"floor: a bare httpx.AsyncClient posting the same {options.comparisons} bodies: {bare:.2f} s, "
                  f"ratio {bare / ideal:.3f}")

        with StubServer(work, "longer") as stub:
            selection = ["--rmb-data", options.data] + (["-m", options.markexpr] if options.markexpr else [])
            judge = ["--rmb-model", "openai:stub-judge", "--rmb-model-arg", f"base_url={stub.base_url}",
                     "--rmb-model-arg", "concurrency=64", "--rmb-cache-dir", str(work / "cache"), *selection]
            fill = pytest_run(judge, work)
            requests = len(stub.requests())
            print(f"cache fill: {requests} requests in {fill:.2f} s")
            cached, length = [], []
            for _ in range(options.repeats):
                cached.append(pytest_run(judge, work))
                length.append(pytest_run(["--rmb-model", "length", *selection], work))
            assert len(stub.requests()) == requests, "a rerun from the cache asked the server"
            print(f"rerun from cache: best {min(cached):.2f} s, length: best {min(length):.2f} s, "
                  f"ratio {min(cached) / min(length):.3f} (target <= 1.2; whole pytest processes, "
                  f"selection {' '.join(selection)})")


if __name__ == "__main__":
    main()
