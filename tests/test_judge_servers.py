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
second. A server that cannot start here is a skip that says why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
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
    """A server process on 127.0.0.1: ready once ``/v1/models`` answers, stopped by its pid."""

    def __init__(self, name: str, command: list[str], port: int, log: Path):
        self.name = name
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.log = log
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1"}
        env.pop("OPENAI_API_KEY", None)
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> list[str]:
        """The served model ids; a skip naming the reason when the server does not come up."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                pytest.skip(f"{self.name} exited with status {self.process.returncode} at start-up: {self.tail()}")
            try:
                response = httpx.get(f"{self.base_url}/models", timeout=5.0)
                if response.status_code == 200:
                    return [entry["id"] for entry in response.json()["data"]]
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        pytest.skip(f"{self.name} did not answer /v1/models within {START_TIMEOUT:.0f} s: {self.tail()}")

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
    port = free_port()
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(smol), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu"]
    server = Server("transformers serve", command, port, tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        served = server.wait_ready()
        assert str(smol) in served
        yield server
    finally:
        server.stop()


def start_llama(gguf: Path, alias: str, folder: Path):
    missing = missing_modules("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context",
                              "pydantic_settings")
    if missing:
        pytest.skip(f"llama.cpp's server needs {', '.join(missing)} (pip install 'llama-cpp-python[server]')")
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
               "--logits_all", "true", "--n_ctx", "8192", "--host", "127.0.0.1", "--port", str(port)]
    server = Server("llama.cpp server", command, port, folder / "llama.log")
    try:
        assert server.wait_ready() == [alias]
        yield server
    finally:
        server.stop()


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
            assert verdict["reason"].startswith("no verdict")
            assert all(order.get("notes") for order in verdict["detail"]["orders"] if order["verdict"] is None)


def test_openai_judge_against_transformers_serve_and_hf_judge_agreeing(pytester, transformers_server, smol):
    """The openai backend at transformers serve completes a run with SmolLM2's missing verdicts
    counted as misses; then the local hf-judge in mode=generate, with the same model, prompt,
    greedy decoding, token limit and follow-up turns (batched and left-padded in process), gives
    the same verdicts, the same replies (in the notes) and the same token counts."""
    shared = ["-k", SELECT_ONE, "--rmb-model-arg", "parse_retries=1", "--rmb-no-cache"]
    served = run_judge(pytester, f"openai:{smol}", *shared, "--rmb-jsonl", "served.jsonl",
                       "--rmb-model-arg", f"base_url={transformers_server.base_url}",
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
    result = run_judge(
        pytester, "openai:smollm2", "-k", SELECT_ONE,
        "--rmb-model-arg", f"base_url={llama_server.base_url}", "--rmb-model-arg", "max_tokens=24",
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
    result = run_judge(
        pytester, "openai:verdict-judge", "-k", SELECT,
        "--rmb-model-arg", f"base_url={llama_verdict_server.base_url}", "--rmb-model-arg", "max_tokens=8",
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


