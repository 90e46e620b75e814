"""The one HTTP client layer: LLM judges, served reward models and the data fetch all use it.

What it guarantees, so callers do not each reinvent it:

- bounded concurrency (one semaphore per client; the connection pool matches it);
- a deadline on every attempt: ``RetryPolicy.timeout`` bounds the whole exchange (connect, send,
  reply headers and body), so a server that drips its reply a byte at a time cannot hold a request
  for longer; connecting alone is capped at 10 s, so a dead host fails within seconds. A download
  may run past ``timeout`` only while its bytes keep coming: each 32 KiB received earns one more
  second, so a multi-MB file on a slow line completes and a drip still ends;
- retries with exponential backoff and jitter on 408, 429, 5xx, timeouts and dropped connections,
  honouring ``Retry-After`` (seconds or an HTTP date); no retry on any other 4xx;
- a refused or unresolvable connection is retried only twice: nothing is listening, and waiting
  longer would only delay a clear error;
- several base URLs share the load round-robin, or by a routing key (:func:`replica_for`) so that
  requests sharing a prefix meet the same server's prefix cache; a retry moves on to the next one;
- errors name the method, URL, status and a short body excerpt, never a header;
- one source of credentials per client, never two silently: an API key (read from the
  environment only) is sent as a Bearer token, credentials in a base URL (``user:pw@host``) as
  HTTP Basic, and both at once are refused (:class:`CredentialsConflict`) before any request;
- no form of a secret (the key, the URL's password, ``user:pw``, their base64 and percent-encoded
  forms) leaves the client: every message, excerpt and logged URL is scrubbed, and so is a decoded
  reply that echoes one (a substring test of the raw body first; the reply is only walked and
  rewritten when it may hold one).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
import hashlib
import itertools
import json
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "APIKey",
    "CredentialsConflict",
    "HTTPFailure",
    "JSONClient",
    "RetryPolicy",
    "api_key_from_env",
    "check_credentials",
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
# A download may outlast the request timeout while its bytes keep coming: each DOWNLOAD_FLOOR bytes
# received earn one more second. A steady 32 KiB/s (a poor line) fetches any file; a drip cannot
# earn its way past the timeout, and even a stall after a fast start ends by the deadline earned.
DOWNLOAD_FLOOR = 32 * 1024
SCRUBBED = "***"
# HTTPFailure.error_type of an attempt that ran out of time as a whole (its name says "Timeout", so
# HTTPFailure.unreachable counts it with httpx's own timeouts).
DEADLINE_ERROR = "RequestTimeout"
_SECRET_QUERY = re.compile(r"(key|token|secret|password|auth|sig|signature|credential)", re.IGNORECASE)


class HTTPFailure(Exception):
    """A request that failed after its retries, or one not worth retrying.

    ``status`` is None when no HTTP response came back; then ``error_type`` names the httpx
    exception (``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError`` for a body cut short...),
    or is ``RequestTimeout`` for an attempt past its whole-request deadline, and ``unreachable``
    tells whether the server could not be reached at all, or not in time.
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


class APIKey(str):
    """An API key that remembers the environment variable it came from (so that messages can name
    it) and keeps its value out of ``repr()`` (so that a traceback's locals or a debug print of a
    settings object cannot show it)."""

    source: str

    def __new__(cls, value: str, source: str) -> Self:
        key = super().__new__(cls, value)
        key.source = source
        return key

    def __repr__(self) -> str:
        return f"<API key from ${self.source}>"


def api_key_from_env(env_name: str | None = None, default: str = "OPENAI_API_KEY") -> APIKey | None:
    """The API key from ``$env_name`` (or ``$default``); None when unset or blank.

    Keys are read from the environment only, so they never travel through option values, ini
    files or result files.
    """
    name = env_name or default
    value = os.environ.get(name, "").strip()
    return APIKey(value, name) if value else None


class CredentialsConflict(ValueError):
    """A base URL carries credentials and an API key is set as well: a request carries one
    ``Authorization`` header, and which one is the user's choice, never a silent one."""


def url_credentials(url: str) -> tuple[str, str] | None:
    """``(user, password)`` from the URL's userinfo, percent-decoded as they are sent; None if none."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return None
    if "@" not in netloc:
        return None
    userinfo = netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    return unquote(user), unquote(password)


def check_credentials(base_urls: Sequence[str], api_key: str | None) -> None:
    """Raise :class:`CredentialsConflict` when a base URL carries credentials and an API key is set.

    Credentials in the URL are sent as HTTP Basic and the key as a Bearer token, each alone; both
    at once would send one and drop the other, so the message names both sources and how to
    choose.
    """
    if not api_key:
        return
    for url in base_urls:
        credentials = url_credentials(url)
        if credentials is None:
            continue
        source = f"${api_key.source}" if isinstance(api_key, APIKey) else "an API key"
        shown = redact_url(url)
        userinfo = urlsplit(shown).netloc.rpartition("@")[0]
        raise CredentialsConflict(
            f"the base URL {shown} carries credentials (sent as HTTP Basic auth) and {source} holds an API "
            f"key (sent as a Bearer token), but a request carries one Authorization header: to send the "
            f"URL's credentials unset {source}; to send the key remove '{userinfo}@' from the base URL"
        )


def secret_forms(base_urls: Sequence[str], api_key: str | None) -> tuple[str, ...]:
    """Every form in which the client's secrets could come back: the key and each URL's password,
    ``user:password`` (a Basic header's content), their base64 (a Basic header itself), their
    percent-encoded forms (a URL, raw or fully quoted). Longest first, so that ``user:pw`` is
    replaced whole before ``pw`` alone."""
    secrets: set[str] = set()

    def add(value: str, *, encoded: str | None = None) -> None:
        if not value:
            return
        secrets.update((value, quote(value, safe=""), _base64(value)))
        if encoded:
            secrets.add(encoded)

    if api_key:
        add(str(api_key))
    for url in base_urls:
        credentials = url_credentials(url)
        if credentials is None:
            continue
        user, password = credentials
        raw_userinfo = urlsplit(url).netloc.rpartition("@")[0]
        raw_password = raw_userinfo.partition(":")[2]
        # A URL with a user and no password authenticates with the user part alone (a token).
        add(password or user, encoded=raw_password or raw_userinfo)
        pair = f"{user}:{password}"
        secrets.update((pair, _base64(pair), raw_userinfo))
    return tuple(sorted((s for s in secrets if s), key=len, reverse=True))


def _base64(text: str) -> str:
    # Without its padding, so that it is found inside a longer encoding as well.
    return base64.b64encode(text.encode()).decode("ascii").rstrip("=")


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


def replica_for(key: str, replicas: int) -> int:
    """The replica (an index into the base URLs) that serves requests with this routing key: the
    same in every run and process (a SHA-256 of the key, not Python's salted ``hash``), and spread
    evenly over the replicas when the keys are many. Requests that share a prompt prefix (the
    answers to one conversation, both orders of one comparison) share a key, so one server's prefix
    cache computes the prefix once."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % replicas


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
    """``retries`` extra attempts; the n-th waits ``backoff * 2**n`` (jittered, at most ``max_backoff``).

    ``timeout``: seconds one attempt may take in all, from connecting to the last byte of the reply
    (a download earns more while its bytes keep coming; see :meth:`JSONClient.download`).
    """

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

    Credentials: ``api_key`` is sent as ``Authorization: Bearer``; credentials in a base URL as
    HTTP Basic (httpx does that); both at once raise :class:`CredentialsConflict` here, before any
    request.
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
        check_credentials(base_urls, api_key)
        self.base_urls = [url.rstrip("/") for url in base_urls]
        self.policy = policy
        self.concurrency = concurrency
        self.requests = 0
        self.retries = 0
        self.failures = 0
        self._secrets = secret_forms(self.base_urls, api_key)
        # What a raw body is searched for before its decoded form is walked: each secret as it
        # would appear inside a JSON string (escaped, or with "/" written "\\/").
        needles = {form.encode() for form in self._secrets}
        needles |= {json.dumps(form)[1:-1].encode() for form in self._secrets}
        needles |= {form.replace("/", "\\/").encode() for form in self._secrets}
        self._needles = tuple(needles)
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

    async def post(self, path: str, payload: dict, *, replica: int | None = None) -> Any:
        """POST ``payload`` as JSON; retried; JSON decoded. It goes to base URL number ``replica``
        (see :func:`replica_for`) when given, else to the next base URL in turn; a retry moves on
        to the next base URL either way."""
        return await self._json("POST", path, payload, fixed=False, replica=replica)

    async def download(self, path: str, dest: str | os.PathLike[str]) -> int:
        """Stream GET ``base_url + path`` (or an absolute URL) into ``dest``; returns bytes written.

        ``dest`` is truncated at each attempt, so a retry after a dropped connection never leaves a
        spliced file; on failure ``dest`` may hold a partial body and the caller removes it. The
        body is written as it comes, unscrubbed: it is data, checked by its caller. An attempt
        may outlast ``timeout`` by one second per :data:`DOWNLOAD_FLOOR` bytes received.
        """
        target = Path(dest)

        async def attempt(url: str, clock: _AttemptClock) -> int:
            async with self._client.stream("GET", url) as response:
                clock.replied = True
                if response.status_code >= 400:
                    await response.aread()
                    return self._raise_status("GET", url, response)
                # Chunks as they arrive (each one earns time, so a drip is seen byte by byte); local
                # writes of network-sized chunks are not worth a thread hop.
                with open(target, "wb") as handle:  # noqa: ASYNC230
                    async for chunk in response.aiter_bytes():
                        handle.write(chunk)
                        clock.earn(len(chunk))
                return clock.received

        return await self._with_retries("GET", path, attempt, fixed=False)

    # -- internals ---------------------------------------------------------------------------

    async def _json(self, method: str, path: str, payload: dict | None, *, fixed: bool,
                    replica: int | None = None) -> Any:
        async def attempt(url: str, clock: _AttemptClock) -> Any:
            async with self._client.stream(method, url, json=payload) as response:
                clock.replied = True
                await response.aread()
            if response.status_code >= 400:
                return self._raise_status(method, url, response)
            try:
                document = response.json()
            except ValueError:
                raise HTTPFailure(
                    method, self._safe_url(url), response.status_code, "response is not JSON", self._excerpt(response)
                ) from None
            return self._scrub_reply(document, response.content)

        return await self._with_retries(method, path, attempt, fixed=fixed, replica=replica)

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
        # Scrubbed before it is cut: a cut through a secret would leave its first half.
        text = " ".join(self._scrub(text).split())
        if len(text) > EXCERPT_CHARS:
            text = text[:EXCERPT_CHARS] + "..."
        return text

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, SCRUBBED)
        return text

    def _scrub_reply(self, document: Any, raw: bytes) -> Any:
        """The decoded reply with every secret replaced, as a caller may keep or show any of it.
        Walked only when the raw body holds a secret's form, or a ``\\u`` escape that could
        spell one."""
        if not self._secrets:
            return document
        if b"\\u" not in raw and not any(needle in raw for needle in self._needles):
            return document
        return self._scrub_value(document)

    def _scrub_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, list):
            return [self._scrub_value(item) for item in value]
        if isinstance(value, dict):
            return {self._scrub(key): self._scrub_value(item) for key, item in value.items()}
        return value

    def _safe_url(self, url: str) -> str:
        return self._scrub(redact_url(url))

    def _base(self, fixed: bool, attempt: int, start: int) -> str:
        if fixed:
            return self.base_urls[0]
        return self.base_urls[(start + attempt) % len(self.base_urls)]

    async def _with_retries(
        self, method: str, path: str, attempt_fn: Callable[[str, _AttemptClock], Awaitable[T]], *, fixed: bool,
        replica: int | None = None,
    ) -> T:
        start = next(self._next) if replica is None else replica
        attempt = 0
        while True:
            url = _join(self._base(fixed, attempt, start), path)
            retry_after: float | None = None
            limit = self.policy.retries
            error: HTTPFailure
            try:
                async with self._semaphore:
                    self.requests += 1
                    # The deadline starts once the request holds its slot: waiting for a slot is
                    # not the server's slowness.
                    clock = _AttemptClock(self.policy.timeout)
                    return await clock.run(attempt_fn(url, clock))
            except _DeadlinePassed:
                error = self._deadline_failure(method, url, clock)
            except HTTPFailure as failure:
                if failure.status is None or not _retryable_status(failure.status):
                    self.failures += 1
                    raise
                error = failure
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

    def _deadline_failure(self, method: str, url: str, clock: _AttemptClock) -> HTTPFailure:
        limit = f"timeout={self.policy.timeout:g}s"
        if clock.received:
            detail = (f"timed out: the download took longer than {limit} plus 1 s per {DOWNLOAD_FLOOR // 1024} KiB "
                      f"received ({clock.received:,} bytes had arrived); the server sent it too slowly")
        elif clock.replied:
            detail = f"timed out: the whole request took longer than {limit}; the server sent its reply too slowly"
        else:
            detail = f"timed out: the whole request took longer than {limit}; no reply came in that time"
        failure = HTTPFailure(method, self._safe_url(url), None, detail)
        failure.error_type = DEADLINE_ERROR
        return failure

    def _transport_failure(self, method: str, url: str, exc: httpx.TransportError) -> HTTPFailure:
        if isinstance(exc, httpx.ConnectTimeout):
            limit = min(self.policy.timeout, CONNECT_TIMEOUT)
            detail = f"timed out ({type(exc).__name__}: no connection within {limit:g}s)"
        elif isinstance(exc, httpx.TimeoutException):
            detail = f"timed out ({type(exc).__name__}: nothing arrived for timeout={self.policy.timeout:g}s)"
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


class _DeadlinePassed(Exception):
    """An attempt ran out of time as a whole; the client turns it into an HTTPFailure."""


class _AttemptClock:
    """One attempt's deadline, and how far the reply had come when it ran out (for the message).

    The attempt runs as a task watched against a deadline that a download can move on (which
    ``asyncio.wait_for`` cannot do, and ``asyncio.timeout`` needs Python 3.11)."""

    def __init__(self, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._first = self._loop.time() + seconds
        self._deadline = self._first
        self.replied = False  # the response headers arrived
        self.received = 0  # body bytes counted by a download

    def earn(self, size: int) -> None:
        """``size`` more bytes of a download arrived: one more second per DOWNLOAD_FLOOR bytes."""
        self.received += size
        self._deadline = self._first + self.received / DOWNLOAD_FLOOR

    async def run(self, attempt: Awaitable[T]) -> T:
        """``attempt``'s result or exception; :class:`_DeadlinePassed` (the attempt cancelled, its
        connection closed) when the deadline comes first."""
        task = asyncio.ensure_future(attempt)
        try:
            while not task.done():
                left = self._deadline - self._loop.time()
                if left <= 0:
                    break
                await asyncio.wait({task}, timeout=left)
        except BaseException:  # the caller is cancelled (Ctrl-C, a stopped batch): so is the attempt
            task.cancel()
            # Whatever it ends with is of no interest now; asyncio would log it as never retrieved.
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
            if task.cancelled() or task.exception() is not None:
                raise _DeadlinePassed
        return task.result()


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
    on_tick: Callable[[], None] | None = None,
    tick_seconds: float = 1.0,
) -> list[T | BaseException]:
    """Run ``jobs`` with one client inside ``asyncio.run``; results in order, exceptions in place.

    ``on_done(index, result)`` runs as each job succeeds, so callers can cache results as they
    arrive; an exception it raises takes that job's place in the results. ``on_tick()`` runs every
    ``tick_seconds`` while jobs run, so that results which arrived together and were not yet saved
    are saved even while the batch then waits a long time on one retried request. A few more
    workers than the client's concurrency take the jobs in turn: a batch of thousands costs no task
    per job, and the first requests go out at once instead of after every job has been started.
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
            ticker = asyncio.ensure_future(_tick(on_tick, tick_seconds)) if on_tick is not None else None
            try:
                await asyncio.gather(*(worker() for _ in range(min(workers, len(jobs)))))
            finally:
                if ticker is not None:
                    ticker.cancel()
            return results

    return asyncio.run(main())


async def _tick(callback: Callable[[], None], seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            callback()
        except Exception:  # noqa: BLE001 - a tick is best effort; the batch's end reports failures
            log.debug("on_tick failed", exc_info=True)

