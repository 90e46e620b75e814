"""Credentials as users give them, against servers on 127.0.0.1 that quote the request's
Authorization header back: in an error body, in a judge's reply (with and without a verdict), in a
served model's reply. Which header goes out is read from the server's side; every output of the
run (terminal, --rmb-json, --rmb-jsonl, --rmb-markdown, JUnit XML, the score cache) is searched for
every form of each secret, computed here."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.helpers import pair, run_rmb, write_dataset
from tests.local_server import LocalServer, Reply, Request

KEY = "sk-live-4f1e2d3c2b1a-NEVER-SHOW"
USER, PASSWORD = "alice", "Pa55@word/+x"  # "@" and "/" must be percent-encoded in a URL
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
PAIRS = [
    pair("401", "Please answer, FINE-MARKER.", "A long and careful answer.", "Short."),
    pair("402", "Please answer, NO-VERDICT-MARKER.", "A long and careful answer.", "Short."),
    pair("403", "Please answer, ERROR-MARKER.", "A long and careful answer.", "Short."),
]


def secret_forms(key: str | None) -> list[str]:
    """Each way a secret could be written down: as given, percent-encoded, in base64 (a Basic
    header; unpadded, so that it is found inside longer text too), and user:password."""
    forms = [PASSWORD, quote(PASSWORD, safe=""), f"{USER}:{PASSWORD}", f"{USER}:{quote(PASSWORD, safe='')}",
             BASIC.rstrip("="), base64.b64encode(PASSWORD.encode()).decode().rstrip("=")]
    if key:
        forms += [key, base64.b64encode(key.encode()).decode().rstrip("=")]
    return forms


def with_credentials(url: str) -> str:
    return url.replace("http://", f"http://{USER}:{quote(PASSWORD, safe='')}@")


def echoing_judge(request: Request, index: int) -> Reply:
    """An OpenAI-compatible judge that quotes the Authorization header in everything it says."""
    header = request.headers.get("Authorization", "(none)")
    if request.method == "GET":
        return Reply(body={"object": "list", "data": [{"id": "judge"}], "seen": header})
    prompt = "\n".join(message["content"] for message in json.loads(request.body)["messages"])
    if "ERROR-MARKER" in prompt:
        return Reply(422, {"error": {"message": f"refused: you sent Authorization: {header}"}})
    longer_first = "[The Start of Assistant A's Answer]\nA long and careful" in prompt
    verdict = "" if "NO-VERDICT-MARKER" in prompt else " [[A]]" if longer_first else " [[B]]"
    content = f"Your request carried Authorization: {header}.{verdict}"
    return Reply(body={"id": "c1", "object": "chat.completion", "model": "judge", "system_fingerprint": header,
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}],
                       "usage": {"prompt_tokens": 50, "completion_tokens": 12}})


def every_output(result, folder: Path) -> dict[str, str]:
    """The terminal, and every file the run wrote under ``folder`` (outputs and cache)."""
    texts = {"terminal": result.stdout.str() + "\n" + result.stderr.str()}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            texts[str(path.relative_to(folder))] = path.read_bytes().decode("utf-8", "replace")
    return texts


def judge_run(pytester, base_url: str, out: Path, data: Path):
    return run_rmb(pytester, "--rmb-model", "openai:judge", "--rmb-model-arg", f"base_url={base_url}",
                   "--rmb-model-arg", "retries=0", "--rmb-data", str(data), "-m", "pairwise", "-k", "s1_violent",
                   "--rmb-json", str(out / "run.json"), "--rmb-jsonl", str(out / "run.jsonl"),
                   "--rmb-markdown", str(out / "run.md"), "--junitxml", str(out / "junit.xml"),
                   "--rmb-cache-dir", str(out / "cache"), "--log-level", "DEBUG", "-rA")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data", {"Pairwise_set/Harmlessness/S1.json": PAIRS})


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "VLLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("source", ["url", "key"])
def test_a_judge_run_never_shows_a_secret_the_server_echoes(pytester, tmp_path, data, no_keys, source) -> None:
    out = tmp_path / "out"
    if source == "key":
        no_keys.setenv("OPENAI_API_KEY", KEY)
    with LocalServer(echoing_judge) as server:
        base_url = (with_credentials(server.url) if source == "url" else server.url) + "/v1"
        result = judge_run(pytester, base_url, out, data)
    sent = {request.headers.get("Authorization") for request in server.requests}
    assert sent == {f"Basic {BASIC}" if source == "url" else f"Bearer {KEY}"}
    chats = [r for r in server.requests if r.path == "/v1/chat/completions"]
    assert len(chats) >= len(PAIRS) * 2  # both orders of each pair (more: the no-verdict reply asked again)

    outputs = every_output(result, out)
    assert {"run.json", "run.jsonl", "run.md", "junit.xml"} <= set(outputs)
    assert any(name.startswith("cache") for name in outputs)
    leaks = {name: [form for form in secret_forms(KEY if source == "key" else None) if form in text]
             for name, text in outputs.items()}
    assert {name: found for name, found in leaks.items() if found} == {}
    # The echoes did reach the outputs, scrubbed: the error in the terminal and the JUnit XML, the
    # verdict-less reply in the JSONL and the cache.
    shown = "Basic ***" if source == "url" else "Bearer ***"
    assert f"refused: you sent Authorization: {shown}" in outputs["terminal"]
    assert f"refused: you sent Authorization: {shown}" in outputs["junit.xml"]
    assert f"Authorization: {shown}" in outputs["run.jsonl"]
    assert any(f"Authorization: {shown}" in text for name, text in outputs.items() if name.startswith("cache"))
    summary = json.loads(outputs["run.json"])
    assert summary["sections"]["harmlessness.pairwise"]["correct"] == 1  # FINE's verdicts, in both orders


def test_a_key_and_url_credentials_at_once_stop_a_judge_run_before_any_request(pytester, data, no_keys) -> None:
    no_keys.setenv("OPENAI_API_KEY", KEY)
    with LocalServer(echoing_judge) as server:
        base_url = with_credentials(server.url) + "/v1"
        result = run_rmb(pytester, "--rmb-model", "openai:judge", "--rmb-model-arg", f"base_url={base_url}",
                         "--rmb-data", str(data), "--rmb-no-cache")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert server.requests == []
    text = result.stdout.str() + result.stderr.str()
    shown = f"http://{USER}:***@{server.url.removeprefix('http://')}/v1"
    assert (f"openai judge: the base URL {shown} carries credentials (sent as HTTP Basic auth) and $OPENAI_API_KEY "
            "holds an API key (sent as a Bearer token), but a request carries one Authorization header: to send "
            f"the URL's credentials unset $OPENAI_API_KEY; to send the key remove '{USER}:***@' from the base URL"
            ) in " ".join(text.split())
    assert [form for form in secret_forms(KEY) if form in text] == []


def echoing_vllm(request: Request, index: int) -> Reply:
    """A vLLM /pooling stand-in scoring a text by its length, quoting the Authorization header."""
    header = request.headers.get("Authorization", "(none)")
    if request.method == "GET":
        return Reply(body={"object": "list", "data": [{"id": "rm", "root": f"/models/rm ({header})"}]})
    messages = json.loads(request.body)["messages"]
    return Reply(body={"object": "list", "model": "rm", "seen": header,
                       "data": [{"index": 0, "object": "pooling", "data": [float(len(messages[-1]["content"]))]}]})


def test_a_served_run_with_url_credentials_sends_basic_auth_and_never_shows_it(pytester, tmp_path, data,
                                                                               no_keys) -> None:
    out = tmp_path / "out"
    with LocalServer(echoing_vllm) as server:
        base_url = with_credentials(server.url)
        result = run_rmb(pytester, "--rmb-model", "vllm:rm", "--rmb-model-arg", f"base_url={base_url}",
                         "--rmb-data", str(data), "-m", "pairwise", "--rmb-json", str(out / "run.json"),
                         "--rmb-jsonl", str(out / "run.jsonl"), "--junitxml", str(out / "junit.xml"),
                         "--rmb-cache-dir", str(out / "cache"), "--log-level", "DEBUG", "-rA")
    assert result.ret == pytest.ExitCode.OK
    assert {request.headers.get("Authorization") for request in server.requests} == {f"Basic {BASIC}"}
    summary = json.loads((out / "run.json").read_text())
    assert summary["sections"]["harmlessness.pairwise"]["correct"] == len(PAIRS)  # the longer answer each time
    outputs = every_output(result, out)
    leaks = {name: [form for form in secret_forms(None) if form in text] for name, text in outputs.items()}
    assert {name: found for name, found in leaks.items() if found} == {}


def test_a_key_and_url_credentials_at_once_stop_a_served_run_at_load(pytester, data, no_keys) -> None:
    no_keys.setenv("VLLM_API_KEY", KEY)
    with LocalServer(echoing_vllm) as server:
        base_url = with_credentials(server.url)
        result = run_rmb(pytester, "--rmb-model", "vllm:rm", "--rmb-model-arg", f"base_url={base_url}",
                         "--rmb-data", str(data), "--rmb-no-cache")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert server.requests == []
    text = " ".join((result.stdout.str() + result.stderr.str()).split())
    assert (f"--rmb-model vllm:rm: the base URL http://{USER}:***@{server.url.removeprefix('http://')} carries "
            "credentials (sent as HTTP Basic auth) and $VLLM_API_KEY holds an API key") in text
    assert [form for form in secret_forms(KEY) if form in text] == []
