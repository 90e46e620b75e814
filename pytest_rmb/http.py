"""The one HTTP client layer: LLM judges, served reward models and the data fetch all use it.

What it guarantees, so callers do not each reinvent it:

- bounded concurrency (one semaphore per client; the connection pool matches it);
- timeouts on every request (connect capped at 10 s, so a dead host fails within seconds);
- retries with exponential backoff and jitter on 408, 429, 5xx, timeouts and dropped connections,
  honouring ``Retry-After`` (seconds or an HTTP date); no retry on any other 4xx;
- a refused or unresolvable connection is retried only twice: nothing is listening, and waiting
  longer would only delay a clear error;
- several base URLs share the load round-robin, and a retry moves on to the next one;
- errors name the method, URL, status and a short body excerpt, never a header; the API key comes
  from the environment only and is scrubbed from every message and log line.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import itertools
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "HTTPFailure",
    "JSONClient",
    "RetryPolicy",
    "api_key_from_env",
    "run_concurrently",
    "split_base_urls",
]

T = TypeVar("T")

log = logging.getLogger("pytest_rmb.http")
# Retries are logged for whoever configures logging (pytest captures them per test); without a
# handler Python's last-resort handler would spray them over a command-line tool's output.
log.addHandler(logging.NullHandler())

RETRY_STATUSES = frozenset({408, 429})
CONNECT_RETRIES = 2
CONNECT_TIMEOUT = 10.0
RETRY_AFTER_CEILING = 60.0
EXCERPT_CHARS = 200
_SECRET_QUERY = re.compile(r"(key|token|secret|password|auth|sig|signature|credential)", re.IGNORECASE)


class HTTPFailure(Exception):
    """A request that failed after its retries, or one not worth retrying.

    ``status`` is None when no HTTP response came back; then ``error_type`` names the httpx
    exception (``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError`` for a body cut short...)
    and ``unreachable`` tells whether the server could not be reached at all.
    ``str()`` names method, URL, status and a body excerpt; headers never appear.
    """

    error_type: str | None = None

    @property
    def unreachable(self) -> bool:
        """No connection could be made, or the server did not answer in time."""
        return self.status is None and bool(self.error_type) and (
            self.error_type in ("ConnectError", "UnsupportedProtocol") or "Timeout" in str(self.error_type)
        )

    def __init__(
        self, method: str, url: str, status: int | None, detail: str, body: str = "", retry_after: float | None = None
    ) -> None:
        self.method = method
        self.retry_after = retry_after
        self.url = url
        self.status = status
        self.detail = detail
        self.body = body
        what = f"HTTP {status}" if status is not None else "no response"
        message = f"{method} {url} failed: {what}"
        if detail:
            message += f" ({detail})"
        if body:
            message += f": {body}"
        super().__init__(message)


def api_key_from_env(env_name: str | None = None, default: str = "OPENAI_API_KEY") -> str | None:
    """The API key from ``$env_name`` (or ``$default``); None when unset or blank.

    Keys are read from the environment only, so they never travel through option values, ini
    files or result files.
    """
    value = os.environ.get(env_name or default, "").strip()
    return value or None


def split_base_urls(text: str) -> list[str]:
    """``"http://a:8000/v1, http://b:8000/v1/"`` -> ``["http://a:8000/v1", "http://b:8000/v1"]``."""
    urls = [part.strip().rstrip("/") for part in text.split(",")]
    urls = [url for url in urls if url]
    if not urls:
        raise ValueError(f"expected one or more http(s) base URLs separated by commas, got {text!r}")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http:// or https:// base URL, got {redact_url(url)!r}")
        try:  # what the client would refuse later (a bad port, a bad host), refused now
            httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"{redact_url(url)!r} is not a usable URL: {exc}") from None
    return urls


def redact_url(url: str) -> str:
    """The URL without a password in its userinfo and without values of key-like query params."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else f"***@{host}"
    query = parts.query
    if query:
        pieces = []
        for item in query.split("&"):
            name, eq, _value = item.partition("=")
            pieces.append(f"{name}=***" if eq and _SECRET_QUERY.search(name) else item)
        query = "&".join(pieces)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` extra attempts; the n-th waits ``backoff * 2**n`` (jittered, at most ``max_backoff``)."""

    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float = 120.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            # The server knows best, so its wait is not shortened to max_backoff; a ceiling keeps a
            # bogus "Retry-After: 86400" from hanging a run, and a small spread keeps many waiting
            # clients from returning at the same instant.
            wait = min(max(retry_after, 0.0), max(self.max_backoff, RETRY_AFTER_CEILING))
            return wait * (1.0 + 0.1 * random.random())
        base = min(self.backoff * (2**attempt), self.max_backoff)
        return base * (0.5 + 0.5 * random.random())


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _retryable_status(status: int) -> bool:
    return status in RETRY_STATUSES or 500 <= status <= 599


def _join(base: str, path: str) -> str:
    """``base`` + ``/path``, keeping a query on the base (``?api-version=...``) at the end."""
    if path.startswith(("http://", "https://")):
        return path
    path, _, query = path.partition("?")
    parts = urlsplit(base)
    joined = parts.path.rstrip("/") + "/" + quote(path.lstrip("/"), safe="/:@!$&()*+,;=~-._%")
    query = "&".join(q for q in (parts.query, query) if q)
    return urlunsplit((parts.scheme, parts.netloc, joined, query, ""))


class _RedactURLs(logging.Filter):
    """httpx logs every request URL at INFO; a key in a query string must not reach the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(str(arg)) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


if not any(isinstance(f, _RedactURLs) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(_RedactURLs())


@functools.cache
def _ssl_context() -> Any:
    # Reading the CA bundle costs 30-60 ms, and the backends make a client per batch (one
    # asyncio.run each): one context per process, shared by every client.
    return httpx.create_ssl_context()


class JSONClient:
    """Async JSON client over ``httpx.AsyncClient``, one per run (use inside one ``asyncio.run``).

    Counters for the caller's stats: ``requests`` (HTTP attempts sent), ``retries`` (attempts
    repeated after a retryable failure), ``failures`` (calls that ended in ``HTTPFailure``).
    """

    def __init__(
        self,
        base_urls: Sequence[str],
        *,
        api_key: str | None = None,
        concurrency: int = 16,
        policy: RetryPolicy = RetryPolicy(),
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if isinstance(base_urls, str):
            base_urls = split_base_urls(base_urls)
        if not base_urls:
            raise ValueError("JSONClient needs at least one base URL")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.base_urls = [url.rstrip("/") for url in base_urls]
        self.policy = policy
        self.concurrency = concurrency
        self.requests = 0
        self.retries = 0
        self.failures = 0
        self._secret = api_key or None
        self._next = itertools.count()
        self._semaphore = asyncio.Semaphore(concurrency)
        headers = {"Accept": "application/json", "User-Agent": "pytest-rmb"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(policy.timeout, connect=min(policy.timeout, CONNECT_TIMEOUT)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            transport=transport,
            follow_redirects=True,
            verify=_ssl_context(),
        )

    @property
    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "retries": self.retries, "failures": self.failures}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, path: str) -> Any:
        """GET ``base_urls[0] + path`` and decode JSON (start-up checks such as ``/models``)."""
        return await self._json("GET", path, None, fixed=True)

    async def post(self, path: str, payload: dict) -> Any:
        """POST ``payload`` as JSON to the next base URL in turn; retried; JSON decoded."""
        return await self._json("POST", path, payload, fixed=False)

    async def download(self, path: str, dest: str | os.PathLike[str]) -> int:
        """Stream GET ``base_url + path`` (or an absolute URL) into ``dest``; returns bytes written.

        ``dest`` is truncated at each attempt, so a retry after a dropped connection never leaves a
        spliced file; on failure ``dest`` may hold a partial body and the caller removes it.
        """
        target = Path(dest)

        async def attempt(url: str) -> int:
            async with self._client.stream("GET", url) as response:
                if response.status_code >= 400:
                    await response.aread()
                    return self._raise_status("GET", url, response)
                size = 0
                # Local writes of 64 KiB chunks are not worth a thread hop.
                with open(target, "wb") as handle:  # noqa: ASYNC230
                    async for chunk in response.aiter_bytes(1 << 16):
                        handle.write(chunk)
                        size += len(chunk)
                return size

        return await self._with_retries("GET", path, attempt, fixed=False)

    # -- internals ---------------------------------------------------------------------------

    async def _json(self, method: str, path: str, payload: dict | None, *, fixed: bool) -> Any:
        async def attempt(url: str) -> Any:
            response = await self._client.request(method, url, json=payload)
            if response.status_code >= 400:
                return self._raise_status(method, url, response)
            try:
                return response.json()
            except ValueError:
                raise HTTPFailure(
                    method, self._safe_url(url), response.status_code, "response is not JSON", self._excerpt(response)
                ) from None

        return await self._with_retries(method, path, attempt, fixed=fixed)

    def _raise_status(self, method: str, url: str, response: httpx.Response) -> Any:
        reason = response.reason_phrase or ""
        raise HTTPFailure(
            method,
            self._safe_url(url),
            response.status_code,
            reason,
            self._excerpt(response),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    def _excerpt(self, response: httpx.Response) -> str:
        try:
            text = response.text
        except (UnicodeDecodeError, LookupError, httpx.ResponseNotRead):  # says nothing useful
            return ""
        text = " ".join(text.split())
        if len(text) > EXCERPT_CHARS:
            text = text[:EXCERPT_CHARS] + "..."
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        if self._secret and self._secret in text:
            text = text.replace(self._secret, "***")
        return text

    def _safe_url(self, url: str) -> str:
        return self._scrub(redact_url(url))

    def _base(self, fixed: bool, attempt: int, start: int) -> str:
        if fixed:
            return self.base_urls[0]
        return self.base_urls[(start + attempt) % len(self.base_urls)]

    async def _with_retries(
        self, method: str, path: str, attempt_fn: Callable[[str], Awaitable[T]], *, fixed: bool
    ) -> T:
        start = next(self._next)
        attempt = 0
        while True:
            url = _join(self._base(fixed, attempt, start), path)
            retry_after: float | None = None
            limit = self.policy.retries
            try:
                async with self._semaphore:
                    self.requests += 1
                    return await attempt_fn(url)
            except HTTPFailure as failure:
                if failure.status is None or not _retryable_status(failure.status):
                    self.failures += 1
                    raise
                error: HTTPFailure = failure
                retry_after = failure.retry_after
            except httpx.TransportError as exc:
                error = self._transport_failure(method, url, exc)
                if isinstance(exc, httpx.ConnectError):
                    limit = min(limit, CONNECT_RETRIES)
            except httpx.HTTPError as exc:  # redirects, decoding: retrying cannot help
                self.failures += 1
                other = HTTPFailure(method, self._safe_url(url), None, type(exc).__name__)
                other.error_type = type(exc).__name__
                raise other from None
            if attempt >= limit:
                self.failures += 1
                if attempt:
                    error.args = (f"{error.args[0]} [after {attempt + 1} attempts]",)
                raise error
            wait = self.policy.delay(attempt, retry_after)
            log.warning("%s; retry %d/%d in %.1fs", error, attempt + 1, limit, wait)
            self.retries += 1
            attempt += 1
            await asyncio.sleep(wait)

    def _transport_failure(self, method: str, url: str, exc: httpx.TransportError) -> HTTPFailure:
        if isinstance(exc, httpx.TimeoutException):
            detail = f"timed out ({type(exc).__name__})"
        elif isinstance(exc, httpx.ConnectError):
            detail = "cannot connect"
        else:
            detail = type(exc).__name__
        reason = self._scrub(" ".join(str(exc).split()))[:EXCERPT_CHARS]
        if reason:
            detail = f"{detail}: {reason}"
        failure = HTTPFailure(method, self._safe_url(url), None, detail)
        failure.error_type = type(exc).__name__
        return failure


# A served backend's start-up check must fail within seconds, whatever the run's request timeout.
STARTUP_TIMEOUT = 5.0


def list_models(
    urls: Sequence[str], path: str, api_key: str | None, timeout: float = STARTUP_TIMEOUT
) -> list[dict[str, Any] | BaseException]:
    """Each server's models, ``{id: entry}``, from ``GET url + path``: all servers at once, one
    quick retry. In place of a list: the :class:`HTTPFailure` of a server that failed, or a
    ``ValueError`` quoting a reply that is not a model list (OpenAI's ``{"data": [...]}``, a bare
    list, entries as objects with an ``id`` or as plain names)."""
    policy = RetryPolicy(retries=1, backoff=0.2, max_backoff=1.0, timeout=timeout)

    async def one(url: str) -> dict[str, Any]:
        async with JSONClient([url], api_key=api_key, concurrency=1, policy=policy) as client:
            document = await client.get(path)
        data = document.get("data") if isinstance(document, Mapping) else document
        if not isinstance(data, list):
            raise ValueError(f"{redact_url(url)}{path} is not a model list: {excerpt_of(document)}")
        listed: dict[str, Any] = {}
        for entry in data:
            name = entry.get("id") if isinstance(entry, Mapping) else entry
            if isinstance(name, str):
                listed[name] = entry
        return listed

    async def all_servers() -> list[Any]:
        return await asyncio.gather(*(one(url) for url in urls), return_exceptions=True)

    return asyncio.run(all_servers())


def excerpt_of(value: Any) -> str:
    """A decoded reply quoted in an error message, cut to EXCERPT_CHARS."""
    text = repr(value)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


_NOT_RUN = object()


def run_concurrently(
    client_factory: Callable[[], JSONClient],
    jobs: Sequence[Callable[[JSONClient], Awaitable[T]]],
    on_done: Callable[[int, T], None] | None = None,
) -> list[T | BaseException]:
    """Run ``jobs`` with one client inside ``asyncio.run``; results in order, exceptions in place.

    ``on_done(index, result)`` runs as each job succeeds, so callers can cache results as they
    arrive; an exception it raises takes that job's place in the results. A few more workers than
    the client's concurrency take the jobs in turn: a batch of thousands costs no task per job,
    and the first requests go out at once instead of after every job has been started.
    """

    async def main() -> list[T | BaseException]:
        async with client_factory() as client:
            results: list[T | BaseException] = [_NOT_RUN] * len(jobs)  # type: ignore[list-item]
            turns = iter(range(len(jobs)))

            async def worker() -> None:
                for index in turns:
                    try:
                        result = await jobs[index](client)
                        if on_done is not None:
                            on_done(index, result)
                    except Exception as exc:  # noqa: BLE001 - the job's own failure, kept in its place
                        results[index] = exc
                    else:
                        results[index] = result

            # A few more workers than slots: a worker whose request waits out a retry's backoff
            # (holding no slot) leaves a spare one to take its slot. (Twice as many cost ~1% of
            # throughput in bench/bench_judge.py: more waiters on the semaphore.)
            workers = client.concurrency + max(4, client.concurrency // 4)
            await asyncio.gather(*(worker() for _ in range(min(workers, len(jobs)))))
            return results

    return asyncio.run(main())
