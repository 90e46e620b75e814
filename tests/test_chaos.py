"""Chaos runs: the judge, a served reward model and the data fetch through a proxy that makes 10% of
the requests fail (tests/chaos_proxy.py: resets before and after the server did the work, 429/500/
502/503 with and without Retry-After, latency spikes, slow drips, bodies cut short or dropped).

Each run must end exactly as a run without faults does (every outcome, verdict and score in the
JSONL; every fetched file verified), and the server must have done no work twice beyond what the
faults forced: for every request, what reached the server = what a clean run sends + the faults
that reached the server and lost their reply. A run killed with SIGKILL part-way and run again
through the proxy must end the same and must not ask again what it had received well before the
kill. Runs are real subprocesses (``python -m pytest ...``) against stand-in servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from tests.chaos_proxy import FAULTS, ChaosProxy, Exchange
from tests.helpers import SAMPLE_DATA, all_files, ctrl_c_reaches_it, pair, write_dataset
from tests.judge_stub import StubServer, comparison
from tests.local_server import LocalServer, Reply
from tests.test_fetch import SampleTree, gets, leftovers, run_fetch

RATE = 0.1
SEED = 19
CONCURRENCY = 64
# Retries enough for the proxy's cap of faults in a row (3), and a per-request timeout far above the
# longest latency spike or drip and any queueing on a busy machine, so that no timeout adds retries
# (and server work) of its own.
RETRIES = 4
TIMEOUT = 120
# The proxy's fault sizes, short so that the file stays within a minute or so on two cores: a
# spike or a drip takes 0.5x to 1.5x of these seconds; Retry-After is a whole second, as servers send.
PROXY = {"rate": RATE, "latency": 0.3, "drip": 0.6, "retry_after": 1.0, "max_in_a_row": 3}
# The start-up model list is tried twice by design (a dead server must fail in seconds); it is not
# what these runs are about, so the proxy lets it through.
SPARE = ("/models",)
# The judge hands over verdicts as they arrive and the engine caches them at most this often
# (pytest_rmb.engine.SAVE_EVERY_SECONDS): a kill may lose about that much, plus scheduling slack.
SAVE_EVERY = 1.0
SLACK = 0.5


def rmb_command(workdir: Path, model: str, *args: str, data: str = "sample") -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(workdir),
            "--rmb-model", model, "--rmb-data", data, "--rmb-cache-dir", str(workdir / "cache"),
            "--rmb-json", str(workdir / "summary.json"), "--rmb-jsonl", str(workdir / "samples.jsonl"), *args]


def run_rmb(workdir: Path, model: str, *args: str,
            data: str = "sample") -> tuple[subprocess.CompletedProcess, dict, list[dict]]:
    """A benchmark run as a user starts it, in its own process; (process, summary, JSONL records)."""
    workdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(rmb_command(workdir, model, *args, data=data), cwd=workdir, capture_output=True,
                          text=True, timeout=1800)
    summary_file, samples_file = workdir / "summary.json", workdir / "samples.jsonl"
    assert summary_file.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    records = [json.loads(line) for line in samples_file.read_text(encoding="utf-8").splitlines()]
    return done, summary, records


def sample_count() -> int:
    """Pairs and Best-of-N lists in the bundled sample, read with the json module alone."""
    return sum(len(records) for records in all_files(SAMPLE_DATA).values())


def forwarded_per_request(exchanges: list[Exchange]) -> Counter[str]:
    return Counter(e.key for e in exchanges if e.forwarded)


def wasted_per_request(exchanges: list[Exchange]) -> Counter[str]:
    return Counter(e.key for e in exchanges if e.fault and FAULTS[e.fault].wasted)


def assert_paid_once(clean: list[Exchange], chaos: list[Exchange]) -> None:
    """Per request: what reached the server in the chaos run = what reached it in the clean run +
    the faults that reached the server and lost their reply."""
    expected = forwarded_per_request(clean) + wasted_per_request(chaos)
    assert forwarded_per_request(chaos) == expected


def assert_faults_met(proxy: ChaosProxy) -> None:
    """The run met faults of many kinds, at about the rate asked for (the draw is a hash: ~RATE)."""
    injected = {kind: n for kind, n in proxy.counts.items() if kind in FAULTS}
    candidates = sum(1 for e in proxy.exchanges if not e.path.endswith(SPARE))
    assert 0.5 * RATE * candidates <= sum(injected.values()) <= 2 * RATE * candidates, proxy.summary()
    assert len(injected) >= 6, proxy.summary()
    assert proxy.counts["wasted"] > 0 and proxy.counts["upstream_failures"] == 0, proxy.summary()


def assert_same_results(chaos: tuple, clean: tuple) -> None:
    (run, summary, records), (clean_run, clean_summary, clean_records) = chaos, clean
    assert run.returncode == clean_run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert len(records) == sample_count()
    assert records == clean_records  # every outcome, verdict and score
    for part in ("sections", "overall", "tasks", "scenarios", "outcomes", "errors", "partial"):
        assert summary[part] == clean_summary[part], part


def file_server(app=None) -> LocalServer:
    """tests/local_server.py's threaded server with room for 64 parallel downloads: its listen queue
    holds 5 connections, and the rest would wait out SYN retries (seconds each)."""
    server = LocalServer(app)
    server.httpd.socket.listen(256)
    return server


# -- the proxy itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FAULTS))
def test_each_fault_does_what_its_name_says(kind):
    body = {"text": "x" * 2000}
    first_only = lambda number, path: kind if number == 0 else None  # noqa: E731
    with file_server(lambda request, index: Reply(body=body)) as server, httpx.Client(timeout=10) as client, \
            ChaosProxy(server.url, latency=0.4, drip=0.4, retry_after=7, plan=first_only) as proxy:
        fault = FAULTS[kind]
        started = time.monotonic()
        if fault.status is None and not fault.delivered:
            with pytest.raises(httpx.TransportError):
                client.get(f"{proxy.url}/one").read()
        else:
            reply = client.get(f"{proxy.url}/one")
            assert reply.status_code == (fault.status or 200)
            assert reply.headers.get("Retry-After") == ("7" if fault.retry_after else None)
            if fault.delivered:
                assert reply.json() == body
        elapsed = time.monotonic() - started
        assert len(server.requests) == int(fault.forwarded)
        # A spike waits before forwarding, a drip sends the body over time: 0.5x to 1.5x their seconds.
        assert (elapsed >= 0.2) == (kind in ("latency", "drip"))
        # The connection stays usable after a fault that answers; a reset or a cut body ends it.
        assert client.get(f"{proxy.url}/two").json() == body
    assert proxy.counts[kind] == 1 and proxy.counts["requests"] == 2
    assert proxy.counts["wasted"] == int(fault.wasted)


def through(proxy: ChaosProxy, paths: list[str], attempts: int = 1) -> dict[tuple[str, int], str | None]:
    """Each path asked ``attempts`` times; the fault each (request, attempt) met."""
    with httpx.Client(timeout=10) as client:
        for _ in range(attempts):
            for path in paths:
                try:
                    client.get(f"{proxy.url}{path}").read()
                except httpx.TransportError:
                    pass
    return {(e.path, e.attempt): e.fault for e in proxy.exchanges}


def test_the_same_seed_gives_the_same_faults_whatever_the_order():
    paths = [f"/file-{i}" for i in range(300)]
    with file_server() as server:
        kinds = tuple(k for k in FAULTS if k not in ("latency", "drip"))  # no waiting
        with ChaosProxy(server.url, seed=5, kinds=kinds) as proxy:
            first = through(proxy, paths, attempts=2)
        with ChaosProxy(server.url, seed=5, kinds=kinds) as proxy:
            again = through(proxy, paths[::-1], attempts=2)
        with ChaosProxy(server.url, seed=6, kinds=kinds) as proxy:
            other = through(proxy, paths, attempts=2)
    assert first == again
    assert first != other
    met = sum(fault is not None for fault in first.values())
    assert 0.05 * len(first) <= met <= 0.15 * len(first)  # rate 0.1 of 600 attempts
    assert len({fault for fault in first.values() if fault}) >= 8


def test_no_request_meets_more_faults_in_a_row_than_the_cap():
    with file_server() as server, ChaosProxy(server.url, rate=1.0, max_in_a_row=3, kinds=("http_503",)) as proxy:
        met = through(proxy, ["/a", "/b"], attempts=5)
    assert [met["/a", attempt] for attempt in range(5)] == ["http_503"] * 3 + [None, "http_503"]


# -- the judge -------------------------------------------------------------------------------------


def judge_args(proxy: ChaosProxy) -> tuple[str, ...]:
    return ("--rmb-model-arg", f"base_url={proxy.url}/v1", "--rmb-model-arg", f"concurrency={CONCURRENCY}",
            "--rmb-model-arg", f"retries={RETRIES}", "--rmb-model-arg", f"timeout={TIMEOUT}",
            "--rmb-model-arg", "order=both")


@pytest.fixture(scope="module")
def judge_stub(tmp_path_factory):
    stub = StubServer(tmp_path_factory.mktemp("judge-stub"), "longer", "--logprobs").start()
    yield stub
    stub.stop()


@pytest.fixture(scope="module")
def judge_clean(judge_stub, tmp_path_factory):
    """The judge on the sample through the proxy at rate 0: (run, summary, records), exchanges."""
    with ChaosProxy(f"http://127.0.0.1:{judge_stub.port}", rate=0.0, seed=SEED, keep_bodies=True) as relay:
        result = run_rmb(tmp_path_factory.mktemp("judge-clean"), "openai:stub-judge", *judge_args(relay))
    assert result[0].returncode == 0, result[0].stdout[-3000:]
    return result, list(relay.exchanges)


def test_judge_through_faults_ends_as_a_clean_run_and_pays_each_comparison_once(judge_stub, judge_clean, tmp_path):
    clean, clean_exchanges = judge_clean
    before = len(judge_stub.requests())
    with ChaosProxy(f"http://127.0.0.1:{judge_stub.port}", seed=SEED, spare=SPARE, **PROXY) as proxy:
        chaos = run_rmb(tmp_path, "openai:stub-judge", *judge_args(proxy))
    assert_same_results(chaos, clean)
    assert_faults_met(proxy)
    assert_paid_once(clean_exchanges, proxy.exchanges)
    # The server's own log: every chat request it answered, faults included.
    asked = len([e for e in judge_stub.requests()[before:] if e["method"] == "POST"])
    unique = len({e.key for e in clean_exchanges if e.method == "POST"})
    assert unique == 2 * clean[1]["engine"]["comparisons_made"]  # order=both: two requests each
    assert asked == unique + proxy.counts["wasted"]
    # The harness counted the retries the faults forced: one per fault that did not deliver.
    undelivered = sum(n for kind, n in proxy.counts.items() if kind in FAULTS and not FAULTS[kind].delivered)
    assert chaos[1]["engine"]["http_retries"] == undelivered


def comparison_of(exchange: Exchange) -> tuple[tuple[str, tuple[str, str]], str]:
    """(the comparison whatever the order, the answer shown as A) of a chat request's body."""
    assert exchange.body is not None
    found = comparison(json.loads(exchange.body)["messages"])
    assert found is not None
    before, a, b = found
    return (before.partition("[The Start")[0], tuple(sorted((a, b)))), a  # type: ignore[return-value]


def files_of_answers() -> dict[tuple[str, str], set[str]]:
    """The sample file(s) each comparison comes from, by its two answers sorted: (chosen, rejected)
    of a pair, (best, loser) of a Best-of-N list."""
    found: dict[tuple[str, str], set[str]] = {}
    for relative, records in all_files(SAMPLE_DATA).items():
        for record in records:
            if "pair_uid" in record:
                twos = [(record["chosen"]["answer"], record["reject"]["answer"])]
            else:
                twos = [(record["bon_best"]["answer"], loser["answer"]) for loser in record["loser_list"]]
            for two in twos:
                found.setdefault(tuple(sorted(two)), set()).add(relative)  # type: ignore[arg-type]
    return found


def test_a_judge_run_killed_at_a_random_moment_resumes_without_asking_again(judge_stub, judge_clean, tmp_path):
    clean, clean_exchanges = judge_clean
    chats = sum(1 for e in clean_exchanges if e.method == "POST")
    kill_after = random.Random(SEED).randint(chats // 4, 3 * chats // 4)  # replies delivered, then SIGKILL
    with ChaosProxy(f"http://127.0.0.1:{judge_stub.port}", seed=SEED + 1, spare=SPARE, keep_bodies=True,
                    **PROXY) as proxy:
        workdir = tmp_path / "run"
        workdir.mkdir()
        process = subprocess.Popen(rmb_command(workdir, "openai:stub-judge", *judge_args(proxy)), cwd=workdir,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while (sum(e.delivered and e.method == "POST" for e in list(proxy.exchanges)) < kill_after
                   and process.poll() is None and time.monotonic() < deadline):
                time.sleep(0.005)
            assert process.poll() is None, "the run ended before the kill"
            process.send_signal(signal.SIGKILL)
            killed_at = time.time()
            assert process.wait(30) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        first = [e for e in proxy.exchanges if e.method == "POST"]
        rerun = run_rmb(workdir, "openai:stub-judge", *judge_args(proxy))
        second = [e for e in list(proxy.exchanges)[len(first):] if e.method == "POST"]
    assert_same_results(rerun, clean)

    # Comparisons whose both orders reached the client well before the kill.
    delivered: dict[tuple, dict[str, float]] = {}
    for exchange in first:
        if exchange.delivered and exchange.finished is not None:
            pair, shown_first = comparison_of(exchange)
            delivered.setdefault(pair, {})[shown_first] = exchange.finished
    received = {pair for pair, orders in delivered.items()
                if len(orders) == 2 and max(orders.values()) < killed_at - SAVE_EVERY - SLACK}
    every = {comparison_of(e)[0] for e in clean_exchanges if e.method == "POST"}
    assert len(every) == clean[1]["engine"]["comparisons_made"]
    assert 0 < len(received) < len(every)
    asked_again = {comparison_of(e)[0] for e in second}
    assert asked_again <= every  # nothing a clean run would not ask
    # The batch running at the kill (the scenario of the last request sent) may lose what arrived
    # while it waited on a retry: the known gap the next test pins down. Nothing else received
    # before the kill is asked again.
    files = files_of_answers()
    assert all(pair[1] in files for pair in every), "a comparison's answers are not found in the sample files"
    running = files[comparison_of(first[-1])[0][1]]
    assert {pair for pair in received & asked_again if not files[pair[1]] & running} == set()


def wait_for_replies(proxy: ChaosProxy, process: subprocess.Popen, count: int, *, seconds: float) -> None:
    """Until ``count`` POST replies went through ``proxy`` whole, with the run still going."""
    deadline = time.monotonic() + seconds
    while sum(e.delivered for e in list(proxy.exchanges) if e.method == "POST") < count:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)


def stop_after_replies(proxy: ChaosProxy, process: subprocess.Popen, count: int, *, seconds: float,
                       stop: str = "kill -9 seconds later") -> None:
    """Once ``count`` POST replies went through ``proxy`` whole (the rest of the batch waits on a
    retry), stop the run: SIGKILL once those replies are seconds old, or Ctrl-C at once."""
    try:
        wait_for_replies(proxy, process, count, seconds=seconds)
        if stop == "Ctrl-C at once":
            # "Delivered" is the proxy's word: the replies are written to the run's socket. A
            # moment (far under SAVE_EVERY) for the run to read them is what makes them arrived;
            # without it, a busy machine signals while some still sit in the socket.
            time.sleep(0.25)
            process.send_signal(signal.SIGINT)
            assert process.wait(30) == pytest.ExitCode.INTERRUPTED
        else:
            time.sleep(2 * (SAVE_EVERY + SLACK))  # those replies are seconds old; the retry still waits
            assert process.poll() is None
            process.send_signal(signal.SIGKILL)
            process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_verdicts_received_while_the_batch_waits_on_a_retry_survive_a_kill(judge_stub, tmp_path):
    data = write_dataset(tmp_path / "data", {"Pairwise_set/Helpfulness/Chat/Discussion.json": [
        pair(str(i), f"Question {i}: how do I keep a plant alive?", f"Water it weekly, number {i}. " * 3, "No.")
        for i in range(20)]})
    workdir = tmp_path / "run"
    workdir.mkdir()

    def command(proxy: ChaosProxy) -> list[str]:
        return rmb_command(workdir, "openai:stub-judge", "--rmb-model-arg", f"base_url={proxy.url}/v1",
                           "--rmb-model-arg", "order=fixed", "--rmb-model-arg", f"concurrency={CONCURRENCY}",
                           data=str(data))

    # The first comparison asked meets a 503 with Retry-After: 4; the other 19 are answered at once.
    stall = ChaosProxy(f"http://127.0.0.1:{judge_stub.port}", spare=SPARE, retry_after=4.0, keep_bodies=True,
                       plan=lambda number, path: "http_503_retry_after" if number == 1 else None)
    with stall:
        process = subprocess.Popen(command(stall), cwd=workdir, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        stop_after_replies(stall, process, 19, seconds=60)
    assert len(stall.exchanges) == 21  # the model list and the 20 comparisons: the retry was not yet sent
    received = {comparison_of(e)[0] for e in stall.exchanges if e.delivered and e.method == "POST"}
    with ChaosProxy(f"http://127.0.0.1:{judge_stub.port}", rate=0.0, keep_bodies=True) as relay:
        done = subprocess.run(command(relay), cwd=workdir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    asked_again = {comparison_of(e)[0] for e in relay.exchanges if e.method == "POST"}
    assert len(received) == 19 and len(asked_again) >= 1
    assert asked_again & received == set()


# -- a served reward model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_stub(tmp_path_factory):
    from tests.test_served import Stub, save_long_decoder

    model = save_long_decoder(tmp_path_factory.mktemp("chaos-model") / "tiny")
    stub = Stub(model, tmp_path_factory.mktemp("vllm-stub"), key=None)
    yield stub
    stub.stop()


def vllm_args(proxy: ChaosProxy) -> tuple[str, ...]:
    return ("--rmb-model-arg", f"base_url={proxy.url}", "--rmb-model-arg", f"concurrency={CONCURRENCY}",
            "--rmb-model-arg", f"retries={RETRIES}", "--rmb-model-arg", f"timeout={TIMEOUT}")


def test_served_model_through_faults_ends_as_a_clean_run_and_scores_each_text_once(vllm_stub, tmp_path):
    from tests.test_served import SERVED_NAME, logged

    upstream = f"http://127.0.0.1:{vllm_stub.port}"
    clean_log = vllm_stub.control()
    with ChaosProxy(upstream, rate=0.0, seed=SEED) as relay:
        clean = run_rmb(tmp_path / "clean", f"vllm:{SERVED_NAME}", *vllm_args(relay))
    chaos_log = vllm_stub.control()
    with ChaosProxy(upstream, seed=SEED, spare=SPARE, **PROXY) as proxy:
        chaos = run_rmb(tmp_path / "chaos", f"vllm:{SERVED_NAME}", *vllm_args(proxy))
    assert_same_results(chaos, clean)
    assert_faults_met(proxy)
    assert_paid_once(relay.exchanges, proxy.exchanges)
    # The server's own log: each text once (with the start-up probe and the self-check's re-scores,
    # as in the clean run), plus each fault that reached it and lost its reply.
    assert len(logged(chaos_log)) == len(logged(clean_log)) + proxy.counts["wasted"]
    texts = clean[1]["engine"]["texts_scored"]
    assert len(logged(clean_log)) == texts + 1 + clean[1]["self_check"]["checked"]


@pytest.mark.parametrize("stop", ["kill -9 seconds later", "Ctrl-C at once"])
def test_scores_received_while_a_served_batch_waits_on_a_retry_survive_a_stop(vllm_stub, tmp_path, stop):
    """A served model hands its rewards to the engine as they arrive, as a judge does: a kill while
    the batch waits on one retried text loses none of the rewards received seconds before, and
    Ctrl-C, even the instant they arrived, loses none at all."""
    from tests.test_served import SERVED_NAME

    data = write_dataset(tmp_path / "data", {"Pairwise_set/Helpfulness/Chat/Discussion.json": [
        pair(str(i), f"Question {i}: how do I keep a plant alive?", f"Water it weekly, number {i}. " * 3, "No.")
        for i in range(20)]})
    texts = 40  # each pair's two answers, each in its own conversation
    workdir = tmp_path / "run"
    workdir.mkdir()
    upstream = f"http://127.0.0.1:{vllm_stub.port}"

    def command(proxy: ChaosProxy) -> list[str]:
        return rmb_command(workdir, f"vllm:{SERVED_NAME}", *vllm_args(proxy), "--rmb-self-check", "0",
                           data=str(data))

    # Asked first: the start-up probe, passed through; then the batch's first text meets a 503 with
    # Retry-After: 4, and the other texts are answered at once.
    asked: list[str] = []

    def first_text_stalls(number: int, path: str) -> str | None:
        asked.append(path)
        return "http_503_retry_after" if len(asked) == 2 else None

    stall = ChaosProxy(upstream, spare=SPARE, retry_after=4.0, keep_bodies=True, plan=first_text_stalls)
    with stall:
        process = subprocess.Popen(command(stall), cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   preexec_fn=ctrl_c_reaches_it)
        stop_after_replies(stall, process, texts, seconds=120, stop=stop)  # the probe and the texts answered at once
    posts = [e for e in stall.exchanges if e.method == "POST"]
    probe = posts[0].key
    received = {e.key for e in posts if e.delivered} - {probe}
    assert len(received) == texts - 1
    with ChaosProxy(upstream, rate=0.0, keep_bodies=True) as relay:
        done = subprocess.run(command(relay), cwd=workdir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    asked_again = {e.key for e in relay.exchanges if e.method == "POST"} - {probe}
    # Only the text that waited on its retry is asked again.
    assert len(asked_again) == 1 and asked_again & received == set()


# -- the data fetch --------------------------------------------------------------------------------


def test_fetch_through_faults_verifies_every_file_and_downloads_each_once(tmp_path):
    tree = SampleTree(tmp_path)
    dest = tmp_path / "dest"
    with file_server(tree.app) as server:
        with ChaosProxy(server.url, seed=SEED, **PROXY) as proxy:
            rc, out, err, _ = run_fetch(proxy.url, dest, tree.manifest, "--jobs", str(CONCURRENCY))
        assert rc == 0, out + err
        assert f"{len(tree.files)}/{len(tree.files)} files verified" in out
        assert all((dest / name).read_bytes() == data for name, data in tree.files.items())
        assert not leftovers(dest)
        assert_faults_met(proxy)
        # The server's log: every file once, plus each fault that reached it and lost its reply.
        wasted = Counter(unquote(e.path).lstrip("/") for e in proxy.exchanges if e.fault and FAULTS[e.fault].wasted)
        assert Counter(gets(server)) == Counter(list(tree.files)) + wasted
