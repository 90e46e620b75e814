"""pytest_rmb.http against real HTTP servers on 127.0.0.1 (threads in this process)."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import itertools
import json
import logging
import re
import time
from collections.abc import Callable
from urllib.parse import quote

import pytest

from pytest_rmb.http import (
    CredentialsConflict,
    HTTPFailure,
    JSONClient,
    RetryPolicy,
    api_key_from_env,
    list_models,
    parse_retry_after,
    run_concurrently,
    split_base_urls,
)
from tests.helpers import run_rmb
from tests.local_server import LocalServer, Reply, Request, free_port

SECRET = "sk-test-9f8e7d6c5b4a-DO-NOT-LEAK"
FAST = RetryPolicy(retries=3, backoff=0.01, max_backoff=0.05, timeout=5.0)


def post_once(base: str | list[str], payload: dict | None = None, **kwargs) -> tuple[object, JSONClient]:
    async def main() -> tuple[object, JSONClient]:
        async with JSONClient([base] if isinstance(base, str) else base, **kwargs) as client:
            return await client.post("/v1/chat/completions", payload or {"q": 1}), client

    return asyncio.run(main())


def failure_of(base: str, **kwargs) -> tuple[HTTPFailure, JSONClient, float]:
    client_box: list[JSONClient] = []

    async def main() -> None:
        async with JSONClient([base], **kwargs) as client:
            client_box.append(client)
            await client.post("/v1/chat/completions", {"q": 1})

    start = time.monotonic()
    with pytest.raises(HTTPFailure) as info:
        asyncio.run(main())
    return info.value, client_box[0], time.monotonic() - start


# -- helpers -------------------------------------------------------------------------------------


def test_split_base_urls() -> None:
    assert split_base_urls(" http://a:8000/v1/ ,https://b:8000/v1") == ["http://a:8000/v1", "https://b:8000/v1"]
    for bad in ("", " , ", "ftp://a/v1", "a:8000/v1", "http://"):
        with pytest.raises(ValueError, match="http"):
            split_base_urls(bad)


def test_api_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    assert api_key_from_env() is None
    monkeypatch.setenv("OPENAI_API_KEY", " sk-default ")
    assert api_key_from_env() == "sk-default"
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-mine")
    assert api_key_from_env("MY_JUDGE_KEY") == "sk-mine"
    monkeypatch.setenv("MY_JUDGE_KEY", "  ")
    assert api_key_from_env("MY_JUDGE_KEY") is None


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("-1") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(7.0)


# -- requests and keys ---------------------------------------------------------------------------


def test_post_sends_json_and_bearer_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RMB_TEST_KEY", SECRET)
    with LocalServer() as server:
        result, client = post_once(server.url + "/", {"model": "m", "n": 2}, api_key=api_key_from_env("RMB_TEST_KEY"))
    assert result == {"ok": True, "path": "/v1/chat/completions"}
    (request,) = server.requests
    assert request.method == "POST"
    assert json.loads(request.body) == {"model": "m", "n": 2}
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    assert client.stats == {"requests": 1, "retries": 0, "failures": 0}


def test_no_authorization_header_without_key() -> None:
    with LocalServer() as server:
        post_once(server.url)
    assert "Authorization" not in server.requests[0].headers


def test_key_never_in_exception_or_log(caplog: pytest.LogCaptureFixture) -> None:
    # A hostile or careless server echoes the Authorization header in its error body.
    def echo(request: Request, index: int) -> Reply:
        status = 503 if index == 0 else 401
        return Reply(status, {"error": f"bad header {request.headers.get('Authorization')}"})

    caplog.set_level(logging.DEBUG)
    with LocalServer(echo) as server:
        failure, _, _ = failure_of(server.url + "/?api_key=" + SECRET, api_key=SECRET, policy=FAST)
    assert len(server.requests) == 2  # 503 retried, 401 not
    assert server.requests[0].headers["Authorization"] == f"Bearer {SECRET}"
    text = str(failure) + repr(failure) + failure.url + failure.body + caplog.text
    assert SECRET not in text
    assert failure.status == 401
    assert "bad header Bearer ***" in str(failure)
    assert "api_key=***" in failure.url
    assert "retry 1/3" in caplog.text  # the retry was logged, without the key


# -- credentials in the base URL ----------------------------------------------------------------

USER, PASSWORD = "alice", "Pa55@word/+x"  # "@" and "/" must be percent-encoded in a URL
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def with_credentials(url: str) -> str:
    return url.replace("http://", f"http://{USER}:{quote(PASSWORD, safe='')}@")


def leaked(text: str, key: str | None = None) -> list[str]:
    """Which form of a secret ``text`` shows: the password raw and percent-encoded, user:password,
    the Basic token (padded or not), the key and its encodings."""
    forms = [PASSWORD, quote(PASSWORD, safe=""), f"{USER}:{PASSWORD}", BASIC, BASIC.rstrip("="),
             base64.b64encode(PASSWORD.encode()).decode().rstrip("=")]
    if key:
        forms += [key, quote(key, safe=""), base64.b64encode(key.encode()).decode().rstrip("=")]
    return [form for form in forms if form in text]


def echo_headers(status: int = 200) -> Callable[[Request, int], Reply]:
    """A server that quotes the request's Authorization header back, in a body of this status."""
    def app(request: Request, index: int) -> Reply:
        header = request.headers.get("Authorization", "")
        return Reply(status, {"seen": f"you sent Authorization: {header}", header: [{"again": header}]})

    return app


def test_url_credentials_go_as_basic_auth_and_no_form_of_them_comes_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    replies = [echo_headers(503), echo_headers(200), echo_headers(422)]
    with LocalServer(lambda request, index: replies[min(index, 2)](request, index)) as server:
        url = with_credentials(server.url)

        async def main() -> tuple[object, HTTPFailure]:
            async with JSONClient([url], policy=FAST) as client:
                document = await client.post("/v1/chat/completions", {"q": 1})  # 503 retried, then 200
                with pytest.raises(HTTPFailure) as info:
                    await client.post("/v1/chat/completions", {"q": 2})  # 422, not retried
                return document, info.value

        document, failure = asyncio.run(main())
    assert [r.headers["Authorization"] for r in server.requests] == [f"Basic {BASIC}"] * 3
    assert document == {"seen": "you sent Authorization: Basic ***", "Basic ***": [{"again": "Basic ***"}]}
    assert failure.status == 422 and "you sent Authorization: Basic ***" in str(failure)
    shown = " ".join([json.dumps(document), str(failure), repr(failure), failure.url, failure.body, caplog.text])
    assert "retry 1/3" in caplog.text and "HTTP Request" in caplog.text  # the logs were there to search
    assert leaked(shown) == []


def test_a_secret_written_with_json_escapes_is_found_in_the_decoded_reply() -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)
    body = ('{"choices": [{"message": {"content": "I saw Bearer ' + escaped + '"}}]}').encode()
    with LocalServer(lambda r, i: Reply(body=body)) as server:
        document, _ = post_once(server.url, api_key=SECRET)
    assert document == {"choices": [{"message": {"content": "I saw Bearer ***"}}]}


def test_a_reply_without_secrets_comes_back_as_it_was_sent() -> None:
    sent = {"choices": [{"message": {"content": "[[A]] \u00e9 Bearer sk-other-key"}}], "n": [1, 2.5, None, True]}
    with LocalServer(lambda r, i: Reply(body=sent)) as server:
        document, _ = post_once(server.url, api_key=SECRET)
    assert document == sent


def test_a_secret_across_the_excerpt_cut_is_scrubbed_whole() -> None:
    # The key straddles character 200, where the excerpt is cut: cutting first would keep its start.
    body = ("x" * 190 + f" Bearer {SECRET} " + "y" * 100).encode()
    with LocalServer(lambda r, i: Reply(401, body)) as server:
        failure, _, _ = failure_of(server.url, api_key=SECRET, policy=FAST)
    assert SECRET[:8] not in str(failure)
    assert str(failure).endswith("x" * 190 + " Bearer **...")  # "***" cut at 200 characters


def test_a_key_and_url_credentials_at_once_are_refused_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RMB_TEST_KEY", SECRET)
    with LocalServer() as server:
        with pytest.raises(CredentialsConflict) as info:
            post_once(with_credentials(server.url), api_key=api_key_from_env("RMB_TEST_KEY"))
    assert server.requests == []
    assert str(info.value) == (
        f"the base URL http://{USER}:***@{server.url[len('http://'):]} carries credentials (sent as HTTP Basic "
        "auth) and $RMB_TEST_KEY holds an API key (sent as a Bearer token), but a request carries one "
        "Authorization header: to send the URL's credentials unset $RMB_TEST_KEY; to send the key remove "
        f"'{USER}:***@' from the base URL"
    )
    assert leaked(str(info.value), SECRET) == []


def test_a_user_without_password_is_the_secret() -> None:
    token = "ghp-token-1234567890"
    with LocalServer(echo_headers()) as server:
        document, _ = post_once(server.url.replace("http://", f"http://{token}@"))
    sent = server.requests[0].headers["Authorization"]
    assert sent == "Basic " + base64.b64encode(f"{token}:".encode()).decode()
    assert token not in json.dumps(document) and sent.split()[1].rstrip("=") not in json.dumps(document)


def test_an_api_key_keeps_its_value_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RMB_TEST_KEY", SECRET)
    key = api_key_from_env("RMB_TEST_KEY")
    assert key == SECRET and f"Bearer {key}" == f"Bearer {SECRET}"
    assert repr(key) == "<API key from $RMB_TEST_KEY>" and SECRET not in repr({"key": key})


# -- retries -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured(status: int) -> None:
    def app(request: Request, index: int) -> Reply:
        if index == 0:
            return Reply(status, {"error": "slow down"}, {"Retry-After": "1"})
        return Reply(body={"answer": 42})

    # backoff alone would wait at most 0.05 s: the measured gap can only come from Retry-After.
    with LocalServer(app) as server:
        result, client = post_once(server.url, policy=FAST)
    assert result == {"answer": 42}
    gap = server.requests[1].at - server.requests[0].at
    assert 1.0 <= gap < 1.6
    assert client.stats == {"requests": 2, "retries": 1, "failures": 0}


def test_retry_after_http_date_is_honoured() -> None:
    target: list[float] = []

    def app(request: Request, index: int) -> Reply:
        if index == 0:
            when = int(time.time()) + 2  # HTTP dates have one-second resolution
            target.append(when - time.time())
            return Reply(429, {}, {"Retry-After": email.utils.formatdate(when, usegmt=True)})
        return Reply(body=[1, 2])

    with LocalServer(app) as server:
        result, _ = post_once(server.url, policy=FAST)
    assert result == [1, 2]
    gap = server.requests[1].at - server.requests[0].at
    assert target[0] - 0.1 <= gap < target[0] + 0.6
    assert gap >= 0.9


def test_backoff_grows_exponentially() -> None:
    policy = RetryPolicy(retries=3, backoff=0.2, max_backoff=10.0, timeout=5.0)
    with LocalServer(lambda r, i: Reply(500) if i < 3 else Reply(body={"ok": 1})) as server:
        result, client = post_once(server.url, policy=policy)
    assert result == {"ok": 1}
    at = [r.at for r in server.requests]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    # jitter keeps each wait within [0.5, 1] x backoff * 2**n
    for n, gap in enumerate(gaps):
        assert 0.2 * 2**n * 0.5 - 0.02 <= gap <= 0.2 * 2**n + 0.15, gaps
    assert client.retries == 3


def test_5xx_retried_then_failure_names_url_status_and_body() -> None:
    with LocalServer(lambda r, i: Reply(500, b"model overloaded: queue full\n" * 50)) as server:
        failure, client, _ = failure_of(server.url + "/v1", policy=FAST)
    assert len(server.requests) == 4  # 1 + 3 retries
    assert failure.status == 500
    assert failure.url == server.url + "/v1/v1/chat/completions"
    message = str(failure)
    assert message.startswith(f"POST {server.url}/v1/v1/chat/completions failed: HTTP 500")
    assert "model overloaded: queue full" in message
    assert "after 4 attempts" in message
    assert len(failure.body) <= 203  # a short excerpt, not the whole 1.5 kB body
    assert client.stats == {"requests": 4, "retries": 3, "failures": 1}


def test_408_is_retried() -> None:
    with LocalServer(lambda r, i: Reply(408) if i == 0 else Reply(body={"ok": 2})) as server:
        result, client = post_once(server.url, policy=FAST)
    assert result == {"ok": 2}
    assert client.retries == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_are_not_retried(status: int) -> None:
    with LocalServer(lambda r, i: Reply(status, {"error": "no such model"})) as server:
        failure, client, _ = failure_of(server.url, policy=FAST)
    assert len(server.requests) == 1
    assert failure.status == status
    assert f"HTTP {status}" in str(failure) and "no such model" in str(failure)
    assert client.stats == {"requests": 1, "retries": 0, "failures": 1}


def test_timeout_is_retried() -> None:
    policy = RetryPolicy(retries=2, backoff=0.01, max_backoff=0.05, timeout=0.3)
    with LocalServer(lambda r, i: Reply(body={"late": i}, delay=1.0 if i == 0 else 0.0)) as server:
        result, client = post_once(server.url, policy=policy)
    assert result == {"late": 1}
    assert client.stats == {"requests": 2, "retries": 1, "failures": 0}


def test_timeout_exhausted_reports_no_response() -> None:
    policy = RetryPolicy(retries=1, backoff=0.01, max_backoff=0.05, timeout=0.2)
    with LocalServer(lambda r, i: Reply(delay=0.6)) as server:
        failure, _, elapsed = failure_of(server.url, policy=policy)
    assert failure.status is None
    assert "timed out" in str(failure) and server.url in str(failure)
    assert elapsed < 2.0


# -- the deadline of a whole request ------------------------------------------------------------

# A reply that would take 8 s to arrive, though no single read waits more than 0.1 s.
DRIPPED = json.dumps({"pad": "x" * 70}).encode()


def test_a_reply_dripped_a_byte_at_a_time_is_cut_at_the_request_timeout() -> None:
    with LocalServer(lambda r, i: Reply(body=DRIPPED, drip=0.1)) as server:
        failure, client, elapsed = failure_of(server.url, policy=RetryPolicy(retries=0, timeout=1.0))
    assert 1.0 <= elapsed < 2.0
    assert str(failure) == (
        f"POST {server.url}/v1/chat/completions failed: no response (timed out: the whole request took longer "
        "than timeout=1s; the server sent its reply too slowly)"
    )
    assert failure.status is None and failure.error_type == "RequestTimeout"
    assert client.stats == {"requests": 1, "retries": 0, "failures": 1}


def test_a_server_silent_past_the_timeout_is_told_apart_from_a_slow_one() -> None:
    with LocalServer(lambda r, i: Reply(delay=2.0)) as server:
        failure, _, elapsed = failure_of(server.url, policy=RetryPolicy(retries=0, timeout=0.5))
    assert elapsed < 1.5
    assert "(timed out: the whole request took longer than timeout=0.5s; no reply came in that time)" in str(failure)


def test_a_dripped_attempt_is_retried_like_any_timeout() -> None:
    def app(request: Request, index: int) -> Reply:
        return Reply(body=DRIPPED, drip=0.1) if index == 0 else Reply(body={"answer": 7})

    with LocalServer(app) as server:
        result, client = post_once(server.url, policy=RetryPolicy(retries=1, backoff=0.01, max_backoff=0.05,
                                                                  timeout=1.0))
    assert result == {"answer": 7}
    assert client.stats == {"requests": 2, "retries": 1, "failures": 0}
    assert 1.0 <= server.requests[1].at - server.requests[0].at < 1.6


def test_a_dripping_download_ends_and_a_slow_steady_one_outlives_the_timeout(tmp_path) -> None:
    steady = bytes(range(256)) * 1024  # 256 KiB in 16 pieces 0.1 s apart: 1.6 s at 160 KiB/s

    def app(request: Request, index: int) -> Reply:
        if "steady" in request.path:
            return Reply(body=steady, drip=0.1, drip_bytes=16 * 1024)
        return Reply(body=b"y" * 100, drip=0.1)  # 10 s in all

    policy = RetryPolicy(retries=0, timeout=1.0)
    with LocalServer(app) as server:

        async def main() -> tuple[int, float, HTTPFailure, float]:
            async with JSONClient([server.url], policy=policy) as client:
                started = time.monotonic()
                size = await client.download("steady.json", tmp_path / "steady")
                steady_time = time.monotonic() - started
                started = time.monotonic()
                with pytest.raises(HTTPFailure) as info:
                    await client.download("drip.json", tmp_path / "drip")
                return size, steady_time, info.value, time.monotonic() - started

        size, steady_time, failure, drip_time = asyncio.run(main())
    assert size == len(steady) and (tmp_path / "steady").read_bytes() == steady
    assert steady_time > 1.0  # longer than timeout, and still complete: its bytes kept coming
    # 1 s plus 1 s per 32 KiB: a dozen bytes earn about a millisecond.
    assert 1.0 <= drip_time < 2.0
    assert re.fullmatch(
        rf"GET {server.url}/drip.json failed: no response \(timed out: the download took longer than timeout=1s "
        r"plus 1 s per 32 KiB received \(\d+ bytes had arrived\); the server sent it too slowly\)",
        str(failure),
    ), str(failure)


def test_a_judge_run_against_a_dripping_server_ends_at_its_timeout(pytester) -> None:
    completion = {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
                  "message": {"role": "assistant", "content": "Assistant A is better. [[A]]"}}]}

    def judge(request: Request, index: int) -> Reply:
        if request.method == "GET":
            return Reply(body={"data": [{"id": "judge"}]})
        return Reply(body=completion, drip=0.5)  # ~70 s per reply, though a byte comes every 0.5 s

    with LocalServer(judge) as server:
        started = time.monotonic()
        result = run_rmb(pytester, "--rmb-model", "openai:judge", "--rmb-model-arg", f"base_url={server.url}/v1",
                         "--rmb-model-arg", "timeout=3", "--rmb-model-arg", "retries=0", "--rmb-data", "sample",
                         "-m", "pairwise", "-k", "s1_violent", "--rmb-no-cache")
        elapsed = time.monotonic() - started
    assert elapsed < 10
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    text = " ".join((result.stdout.str() + result.stderr.str()).split())
    assert (f"POST {server.url}/v1/chat/completions failed: no response (timed out: the whole request took longer "
            "than timeout=3s; the server sent its reply too slowly)") in text
    chats = [r for r in server.requests if r.method == "POST"]
    assert len(chats) == 4  # two sample pairs in both orders, each asked once: retries=0


def test_connection_refused_fails_fast_with_clear_message() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    failure, client, elapsed = failure_of(url)  # default policy: 4 retries, 0.5 s backoff
    assert elapsed < 3.0
    assert failure.status is None and failure.unreachable
    assert failure.url == url + "/v1/chat/completions"
    assert str(failure).startswith(f"POST {url}/v1/chat/completions failed: no response (cannot connect")
    assert client.stats == {"requests": 3, "retries": 2, "failures": 1}


def test_invalid_json_is_a_failure() -> None:
    with LocalServer(lambda r, i: Reply(200, b"<html>proxy login</html>")) as server:
        failure, _, _ = failure_of(server.url, policy=FAST)
    assert failure.status == 200
    assert "not JSON" in str(failure) and "proxy login" in str(failure)


# -- several servers, concurrency ----------------------------------------------------------------


def test_round_robin_across_base_urls() -> None:
    with LocalServer() as a, LocalServer() as b:
        results = run_concurrently(
            lambda: JSONClient(split_base_urls(f"{a.url}/v1,{b.url}/v1/"), policy=FAST),
            [lambda c, i=i: c.post("/chat", {"i": i}) for i in range(10)],
        )
    assert results == [{"ok": True, "path": "/v1/chat"}] * 10
    assert len(a.requests) == 5 and len(b.requests) == 5
    assert sorted(json.loads(r.body)["i"] for r in a.requests + b.requests) == list(range(10))


def test_retry_moves_to_the_next_base_url() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with LocalServer() as live:
        results = run_concurrently(
            lambda: JSONClient([dead, live.url], policy=FAST), [lambda c: c.post("/x", {}) for _ in range(4)]
        )
    assert results == [{"ok": True, "path": "/x"}] * 4
    assert len(live.requests) == 4


def test_get_uses_the_first_base_url() -> None:
    with LocalServer() as a, LocalServer() as b:

        async def main() -> list:
            async with JSONClient([a.url, b.url]) as client:
                return [await client.get("/v1/models") for _ in range(3)]

        assert asyncio.run(main()) == [{"ok": True, "path": "/v1/models"}] * 3
    assert len(a.requests) == 3 and not b.requests
    assert a.requests[0].method == "GET"


def test_concurrency_bound_and_results_in_order() -> None:
    with LocalServer(lambda r, i: Reply(body=json.loads(r.body), delay=0.1)) as server:
        done: list[int] = []
        start = time.monotonic()
        results = run_concurrently(
            lambda: JSONClient([server.url], concurrency=3, policy=FAST),
            [lambda c, i=i: c.post("/score", {"i": i}) for i in range(12)],
            on_done=lambda index, result: done.append(index),
        )
        elapsed = time.monotonic() - start
    assert server.max_in_flight == 3
    assert results == [{"i": i} for i in range(12)]
    assert sorted(done) == list(range(12))
    assert elapsed >= 0.4  # 12 requests of 0.1 s, three at a time


def test_run_concurrently_keeps_exceptions_in_place() -> None:
    def app(request: Request, index: int) -> Reply:
        i = json.loads(request.body)["i"]
        return Reply(404, {"error": f"missing {i}"}) if i == 1 else Reply(body={"i": i})

    seen: dict[int, object] = {}
    with LocalServer(app) as server:
        results = run_concurrently(
            lambda: JSONClient([server.url], policy=FAST),
            [lambda c, i=i: c.post("/s", {"i": i}) for i in range(3)],
            on_done=seen.__setitem__,
        )
    assert results[0] == {"i": 0} and results[2] == {"i": 2}
    assert isinstance(results[1], HTTPFailure) and results[1].status == 404
    assert seen == {0: {"i": 0}, 2: {"i": 2}}


def test_an_exception_from_on_done_takes_its_jobs_place_and_the_rest_go_on() -> None:
    def refuse_two(index: int, result: object) -> None:
        if index == 2:
            raise ValueError("cannot keep result 2")

    with LocalServer(lambda r, i: Reply(body=json.loads(r.body))) as server:
        results = run_concurrently(
            lambda: JSONClient([server.url], concurrency=2, policy=FAST),
            [lambda c, i=i: c.post("/s", {"i": i}) for i in range(6)],
            on_done=refuse_two,
        )
    assert [r for i, r in enumerate(results) if i != 2] == [{"i": i} for i in range(6) if i != 2]
    assert isinstance(results[2], ValueError) and str(results[2]) == "cannot keep result 2"


# -- streaming download --------------------------------------------------------------------------


def test_download_streams_to_file(tmp_path) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB
    with LocalServer(lambda r, i: Reply(body=blob) if "a%20b" in r.path else Reply(404, b"nope")) as server:

        async def main() -> int:
            async with JSONClient([server.url], policy=FAST) as client:
                size = await client.download("dir/a b.json", tmp_path / "out")
                with pytest.raises(HTTPFailure) as info:
                    await client.download("dir/missing.json", tmp_path / "missing")
                assert info.value.status == 404 and info.value.url.endswith("/dir/missing.json")
                return size

        assert asyncio.run(main()) == len(blob)
    assert (tmp_path / "out").read_bytes() == blob
    assert server.requests[0].path == "/dir/a%20b.json"


def test_download_cut_short_is_retried_then_reported(tmp_path) -> None:
    blob = b"x" * 100_000

    def app(request: Request, index: int) -> Reply:
        if "flaky" in request.path:
            return Reply(body=blob, truncate=5000 if index == 0 else None)
        return Reply(body=blob, truncate=5000)

    with LocalServer(app) as server:

        async def main() -> tuple[int, HTTPFailure]:
            async with JSONClient([server.url], policy=FAST) as client:
                size = await client.download("flaky.json", tmp_path / "flaky")
                with pytest.raises(HTTPFailure) as info:
                    await client.download("broken.json", tmp_path / "broken")
                return size, info.value

        size, failure = asyncio.run(main())
    assert size == len(blob) and (tmp_path / "flaky").read_bytes() == blob
    assert failure.status is None and not failure.unreachable
    assert failure.error_type == "RemoteProtocolError"
    assert "broken.json" in str(failure) and "after 4 attempts" in str(failure)
    assert len(server.requests) == 2 + 4


# -- the start-up model listing -------------------------------------------------------------------


def test_list_models_reads_every_shape_and_names_what_is_not_a_list() -> None:
    replies = {
        "/a/v1/models": Reply(body={"object": "list", "data": [{"id": "judge", "root": "/w"}, "plain-name", {"x": 1}]}),
        "/b/v1/models": Reply(body=["bare-list-model"]),
        "/c/v1/models": Reply(body={"data": "nope"}),
        "/d/v1/models": Reply(status=401, body={"error": "no key"}),
    }
    with LocalServer(lambda request, index: replies[request.path]) as server:
        down = f"http://127.0.0.1:{free_port()}"
        urls = [f"{server.url}/a", f"{server.url}/b", f"{server.url}/c", f"{server.url}/d", down]
        answers = list_models(urls, "/v1/models", SECRET, timeout=2.0)
        assert {request.headers.get("Authorization") for request in server.requests} == {f"Bearer {SECRET}"}
    assert answers[0] == {"judge": {"id": "judge", "root": "/w"}, "plain-name": "plain-name"}
    assert answers[1] == {"bare-list-model": "bare-list-model"}
    assert isinstance(answers[2], ValueError)
    assert str(answers[2]) == f"{server.url}/c/v1/models is not a model list: {{'data': 'nope'}}"
    assert isinstance(answers[3], HTTPFailure) and answers[3].status == 401
    assert isinstance(answers[4], HTTPFailure) and answers[4].status is None and answers[4].unreachable
    assert all(SECRET not in str(answer) for answer in answers)
