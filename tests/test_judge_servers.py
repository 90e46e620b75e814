"""LLM judges against real OpenAI-compatible servers, started here on 127.0.0.1 and stopped by pid.

- ``transformers serve`` (pip extra ``transformers[serving]``; it ignores ``logprobs``) serving
  SmolLM2-135M-Instruct converted to an ordinary checkpoint (:mod:`tests.smollm`);
- llama.cpp's server (``llama-cpp-python[server]``) serving the same model's GGUF file, with
  ``--logits_all true`` so that it returns logprobs.

Each is driven by ``pytest --rmb-model openai:... --rmb-data sample`` as a user runs it. SmolLM2's
verdicts are often wrong or missing: the runs must complete with those counted as misses, never as
errors. Last, the local ``hf-judge:`` in ``mode=generate`` must give the verdicts the ``openai:``
backend gets from ``transformers serve`` running the same model.

Scenarios are few and replies short: on 2 shared CPU cores a 135M model writes a few tokens a
second. A server that is not installed, or that a signal kills (at start-up or mid-run: llama.cpp
builds have segfaulted on SmolLM2), is a skip naming the server, its version and the signal: a
crash of someone else's native code, not of pytest-rmb. A server that exits by itself or answers
wrongly is a failure. The last tests prove that split with a stand-in server that crashes on cue.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests import smollm

START_TIMEOUT = 300.0
SELECT = "casual_conversation or s1_violent"
# One scenario for the slower runs: 2 pairs and 1 Best-of-N list.
SELECT_ONE = "casual_conversation"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A server process on 127.0.0.1: ready once ``/v1/models`` answers, stopped by its pid.

    ``version`` ("llama-cpp-python 0.3.36") goes into every skip and failure, so a report says which
    build crashed."""

    def __init__(self, name: str, version: str, command: list[str], port: int, log: Path):
        self.name = name
        self.version = version
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.log = log
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1"}
        env.pop("OPENAI_API_KEY", None)
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> list[str]:
        """The served model ids. A skip when it does not come up in time or a signal kills it; a
        failure when it exits by itself (a bad command line of ours exits like that)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.check_running("at start-up")
            try:
                response = httpx.get(f"{self.base_url}/models", timeout=5.0)
                if response.status_code == 200:
                    return [entry["id"] for entry in response.json()["data"]]
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        pytest.skip(f"{self.name} ({self.version}) did not answer /v1/models within {START_TIMEOUT:.0f} s: "
                    f"{self.tail()}")

    def check_running(self, when: str, grace: float = 0.0) -> None:
        """Nothing while the process runs (after waiting up to ``grace`` seconds for it to end: a
        client sees the connection reset a moment before the kernel reports the death). Dead by a
        signal: a skip naming the server, its version and the signal, with its log's last lines.
        Exited with a status: a failure, the same way."""
        if grace > 0:
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                return
        status = self.process.poll()
        if status is None:
            return
        if status < 0:
            pytest.skip(f"{self.name} ({self.version}) was killed by {signal_name(-status)} {when}, a crash "
                        f"of the server, not of pytest-rmb; its log ends: {self.tail()}")
        pytest.fail(f"{self.name} ({self.version}) exited with status {status} {when}; its log ends: {self.tail()}",
                    pytrace=False)

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def signal_name(number: int) -> str:
    """``SIGSEGV (signal 11)``; just the number for one Python does not name."""
    try:
        return f"{signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"signal {number}"


def serve(name: str, version: str, command: Callable[[int], list[str]], log: Path, model: str) -> Iterator[Server]:
    """A fixture's body: ``command(port)`` started, checked to serve ``model``, yielded, and stopped
    however the test ends."""
    port = free_port()
    server = Server(name, version, command(port), port, log)
    try:
        served = server.wait_ready()
        assert model in served, served
        yield server
    finally:
        server.stop()


def installed(distribution: str) -> str:
    """``llama-cpp-python 0.3.36``: how a skip names the build that crashed."""
    try:
        return f"{distribution} {importlib.metadata.version(distribution)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{distribution} (version unknown)"


def missing_modules(*names: str) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


@pytest.fixture(scope="module")
def smol() -> Path:
    return smollm.prepare_checkpoint()


@pytest.fixture(scope="module")
def transformers_server(smol, tmp_path_factory):
    missing = missing_modules("fastapi", "uvicorn", "openai")
    if missing:
        pytest.skip(f"transformers serve needs {', '.join(missing)} (pip install 'transformers[serving]')")

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "transformers.cli.transformers", "serve", str(smol), "--host", "127.0.0.1",
                "--port", str(port), "--device", "cpu"]

    yield from serve("transformers serve", installed("transformers"), command,
                     tmp_path_factory.mktemp("serve") / "serve.log", str(smol))


def start_llama(gguf: Path, alias: str, folder: Path) -> Iterator[Server]:
    missing = missing_modules("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context",
                              "pydantic_settings")
    if missing:
        pytest.skip(f"llama.cpp's server needs {', '.join(missing)} (pip install 'llama-cpp-python[server]')")

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
                "--logits_all", "true", "--n_ctx", "8192", "--host", "127.0.0.1", "--port", str(port)]

    yield from serve("llama.cpp server", installed("llama-cpp-python"), command, folder / "llama.log", alias)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """llama.cpp serving SmolLM2-135M-Instruct's GGUF file as it ships."""
    yield from start_llama(smollm.require_gguf(), "smollm2", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def llama_verdict_server(tmp_path_factory):
    """llama.cpp serving the planted judge that always replies [[A]] with P(A) = PLANTED_P_A."""
    yield from start_llama(smollm.verdict_judge_gguf(), "verdict-judge", tmp_path_factory.mktemp("llama"))


def run_judge(pytester, spec: str, *args: str):
    return pytester.runpytest("-p", "no:cacheprovider", "--rmb-model", spec, "--rmb-data", "sample", *args)


def judge_run(pytester, server: Server, spec: str, *args: str):
    """A run against ``server``, checked before and after: a server that died (now or in an earlier
    test of the module) is the skip or failure :meth:`Server.check_running` says, never a run
    whose connection errors look like a failure of ours. A failed run first gives a dying server
    a few seconds to be reaped."""
    server.check_running("before this test")
    result = run_judge(pytester, spec, "--rmb-model-arg", f"base_url={server.base_url}", *args)
    server.check_running("during the run", grace=0.0 if result.ret == 0 else 5.0)
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def comparisons(records: list[dict]):
    for record in records:
        for verdict in record["verdicts"]:
            if verdict is not None:
                yield record, verdict


def check_misses_are_counted(result, records: list[dict]) -> None:
    """Every comparison is a verdict or a miss with its reason; nothing is an error."""
    assert result.ret == 0, result.stdout.str()[-3000:]
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("missed", 0) == len(records)
    assert "error" not in outcomes and "errors" not in outcomes
    for _, verdict in comparisons(records):
        assert verdict["error"] is None
        if verdict["won"] is None:
            # A reply that ran out of max_tokens before its verdict is a cut-off, said as such.
            assert verdict["reason"].startswith(("no verdict", "cut off"))
            assert verdict["reason"].startswith("cut off") == bool(verdict["detail"].get("cut_off"))
            assert all(order.get("notes") for order in verdict["detail"]["orders"] if order["verdict"] is None)


def test_openai_judge_against_transformers_serve_and_hf_judge_agreeing(pytester, transformers_server, smol):
    """The openai backend at transformers serve completes a run with SmolLM2's missing verdicts
    counted as misses; then the local hf-judge in mode=generate, with the same model, prompt,
    greedy decoding, token limit and follow-up turns (batched and left-padded in process), gives
    the same verdicts, the same replies (in the notes) and the same token counts."""
    shared = ["-k", SELECT_ONE, "--rmb-model-arg", "parse_retries=1", "--rmb-no-cache"]
    served = judge_run(pytester, transformers_server, f"openai:{smol}", *shared, "--rmb-jsonl", "served.jsonl",
                       "--rmb-model-arg", "max_tokens=32", "--rmb-model-arg", "concurrency=2",
                       "--rmb-model-arg", "timeout=600")
    served_records = read_jsonl(pytester.path / "served.jsonl")
    check_misses_are_counted(served, served_records)
    judged = list(comparisons(served_records))
    assert judged
    for _, verdict in judged:
        # transformers serve ignores logprobs: no soft score, never a made-up one.
        assert verdict["p_first"] is None
        usage = verdict["detail"]["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0

    local = run_judge(pytester, f"hf-judge:{smol}", *shared, "--rmb-jsonl", "local.jsonl",
                      "--rmb-model-arg", "mode=generate", "--rmb-model-arg", "max_new_tokens=32")
    local_records = read_jsonl(pytester.path / "local.jsonl")
    check_misses_are_counted(local, local_records)
    assert served.parseoutcomes() == local.parseoutcomes()

    def summary(record):
        return [None if v is None else
                (v["won"], [(o["chosen"], o["votes"], o.get("notes")) for o in v["detail"]["orders"]],
                 v["detail"]["usage"])
                for v in record["verdicts"]]

    local_by_sample = {(r["kind"], r["uid"]): r for r in local_records}
    assert sorted(local_by_sample) == sorted((r["kind"], r["uid"]) for r in served_records)
    differences = [(r["kind"], r["uid"], summary(r), summary(local_by_sample[r["kind"], r["uid"]]))
                   for r in served_records if summary(r) != summary(local_by_sample[r["kind"], r["uid"]])]
    assert not differences, json.dumps(differences, indent=1)[:6000]


def test_openai_judge_against_llama_cpp_counts_smollm_misses(pytester, llama_server):
    result = judge_run(
        pytester, llama_server, "openai:smollm2", "-k", SELECT_ONE, "--rmb-model-arg", "max_tokens=24",
        "--rmb-model-arg", "parse_retries=1", "--rmb-model-arg", "concurrency=2", "--rmb-model-arg", "timeout=600",
        "--rmb-jsonl", "out.jsonl", "--rmb-no-cache",
    )
    records = read_jsonl(pytester.path / "out.jsonl")
    check_misses_are_counted(result, records)
    assert list(comparisons(records))


def test_llama_cpp_logprobs_give_p_first(pytester, llama_verdict_server):
    """A real server's logprobs at the verdict letter become P(chosen): the planted judge says
    [[A]] with P(A) = 0.75 to everything, so the chosen answer has P 0.75 when shown as A, 0.25
    as B, and every comparison is a flip (an always-A judge scores 0 under order=both)."""
    result = judge_run(
        pytester, llama_verdict_server, "openai:verdict-judge", "-k", SELECT, "--rmb-model-arg", "max_tokens=8",
        "--rmb-model-arg", "concurrency=2", "--rmb-jsonl", "out.jsonl", "--rmb-no-cache",
    )
    records = read_jsonl(pytester.path / "out.jsonl")
    check_misses_are_counted(result, records)
    p_a = smollm.PLANTED_P_A
    judged = list(comparisons(records))
    assert judged
    for record, verdict in judged:
        assert verdict["won"] is False and verdict["detail"]["flip"] is True
        orders = {order["chosen"]: order for order in verdict["detail"]["orders"]}
        assert sorted(orders) == ["A", "B"] and all(o["votes"] == ["A"] for o in orders.values())
        assert orders["A"]["p_chosen"] == pytest.approx(p_a, abs=1e-3)
        assert orders["B"]["p_chosen"] == pytest.approx(1 - p_a, abs=1e-3)
        assert verdict["p_first"] == pytest.approx(0.5, abs=1e-3)
    pairwise = [record for record in records if record["kind"] == "pairwise"]
    assert pairwise and all(record["p_chosen"] == pytest.approx(0.5, abs=1e-3) for record in pairwise)
    assert result.parseoutcomes().get("missed", 0) == len(records)


# -- the skip-or-fail split, proved with a stand-in server that misbehaves on cue ------------------

REPO_ROOT = Path(__file__).resolve().parent.parent
STAND_IN_VERSION = "stand-in-judge 9.9.9"

# An OpenAI-compatible server in a few lines that serves model "stand-in" and misbehaves as its
# first argument says: killed by SIGSEGV or exiting with status 3, at start-up or on the first
# chat completion, or answering every chat completion with a page that is not JSON.
STAND_IN_SERVER = '''
import http.server
import json
import os
import resource
import signal
import sys

mode, port = sys.argv[1], int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash on cue leaves no core file behind


def die(when):
    print(f"stand-in: dying on cue {when}", flush=True)
    if mode.startswith("segv"):
        # Raised in this thread, as a fault in native code is: os.kill could reach another
        # thread first and let os._exit below win the race.
        signal.raise_signal(signal.SIGSEGV)
    os._exit(3)


if mode.endswith("at-start"):
    die("while loading")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.reply(json.dumps({"object": "list", "data": [{"id": "stand-in"}]}).encode())

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if mode == "garbage":
            self.reply(b"<html>not an API</html>")
        else:
            die("at the first chat completion")

    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''

# A test of the server tests' own shape: a fixture built on serve(), one judge_run, the same checks.
STAND_IN_TEST = '''
import sys

import pytest

from tests.test_judge_servers import check_misses_are_counted, judge_run, read_jsonl, serve


@pytest.fixture
def stand_in(tmp_path):
    yield from serve("stand-in judge", {version!r}, lambda port: [sys.executable, {script!r}, {mode!r}, str(port)],
                     tmp_path / "stand-in.log", "stand-in")


def test_judge_at_the_stand_in(pytester, stand_in):
    result = judge_run(pytester, stand_in, "openai:stand-in", "-k", "casual_conversation",
                       "--rmb-model-arg", "retries=0", "--rmb-jsonl", "out.jsonl", "--rmb-no-cache")
    check_misses_are_counted(result, read_jsonl(pytester.path / "out.jsonl"))
'''


def stand_in_outcome(pytester, monkeypatch, mode: str) -> tuple[str, str]:
    """(outcome, message) of a server test against the stand-in in ``mode``, run by pytest in a
    process of its own, as CI runs the real ones: "skipped", "failed" (in the test or, as an error,
    in its fixture: red either way) or "passed"."""
    script = pytester.path / "stand_in_server.py"
    script.write_text(STAND_IN_SERVER, encoding="utf-8")
    pytester.makepyfile(test_stand_in=STAND_IN_TEST.format(version=STAND_IN_VERSION, script=str(script), mode=mode))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    pytester.runpytest_subprocess("-p", "pytester", "-p", "no:cacheprovider", "--junitxml", "report.xml",
                                  "test_stand_in.py", timeout=300)
    [case] = ElementTree.parse(pytester.path / "report.xml").getroot().iter("testcase")
    for element, outcome in (("skipped", "skipped"), ("failure", "failed"), ("error", "failed")):
        found = case.find(element)
        if found is not None:
            return outcome, f"{found.get('message')}\n{found.text or ''}"
    return "passed", ""


@pytest.mark.parametrize("mode, when", [("segv-on-chat", "during the run"), ("segv-at-start", "at start-up")],
                         ids=["mid-run", "start-up"])
def test_a_server_killed_by_a_signal_is_a_skip_naming_it(pytester, monkeypatch, mode, when):
    outcome, message = stand_in_outcome(pytester, monkeypatch, mode)
    assert outcome == "skipped", message
    assert f"stand-in judge ({STAND_IN_VERSION}) was killed by SIGSEGV (signal 11) {when}" in message
    assert "stand-in: dying on cue" in message  # the server's log tail


@pytest.mark.parametrize("mode, says", [
    ("exit-on-chat", f"stand-in judge ({STAND_IN_VERSION}) exited with status 3 during the run"),
    ("exit-at-start", f"stand-in judge ({STAND_IN_VERSION}) exited with status 3 at start-up"),
    ("garbage", "<html>not an API</html>"),  # quoted by the run's own errors
], ids=["exit-mid-run", "exit-at-start-up", "garbage"])
def test_a_server_that_exits_or_answers_garbage_is_a_failure(pytester, monkeypatch, mode, says):
    outcome, message = stand_in_outcome(pytester, monkeypatch, mode)
    assert outcome == "failed", message
    assert says in message
    assert "SIGSEGV" not in message
