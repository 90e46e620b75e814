"""A fault-injecting HTTP/1.1 proxy for chaos runs: it sits on 127.0.0.1 between pytest-rmb and a
stand-in server and makes a seeded share of the requests fail the ways real networks and servers do.

Per request, with probability ``rate``, one fault of these kinds (``FAULTS``):

- ``reset_before``: the connection is reset; the request never reaches the server;
- ``http_429``, ``http_503`` (each with and without ``Retry-After``): the proxy answers in the
  server's place, as a rate limiter or an overloaded load balancer would; nothing is forwarded;
- ``reset_after``: the request is forwarded, the server does the work, and the connection is reset
  instead of the reply;
- ``http_500``, ``http_502`` (each with and without ``Retry-After``): forwarded, and the server's
  reply is replaced by the error, as a gateway that lost its upstream's answer would;
- ``truncated``: the reply's headers promise the whole body, half of it is sent, then the
  connection is closed;
- ``dropped``: half of the body, then the connection is reset;
- ``latency``: the request waits ``latency`` seconds (a spike) before it is forwarded;
- ``drip``: the headers at once, then the body a few bytes at a time over ``drip`` seconds.

The last two deliver the server's full reply late; every other kind costs the client a retry, and
the forwarded ones among them cost the server a second piece of work. ``Fault.wasted`` says which.

The schedule depends on the seed and on each request's content, never on timing: the n-th time the
proxy sees a given request (method, path and body) it does the same thing, whatever the order in
which concurrent requests arrive. So the same seed gives the same faults, and a run can be compared
with a clean one request by request. ``max_in_a_row`` caps the faults one request can meet in a row
(a client with that many retries always gets through); ``spare`` names paths passed through
untouched. A test that needs one fault at one place gives ``plan`` instead of a rate: a function
of the request's arrival number and path that names the fault kind, or None.

Keep-alive works both ways: requests are read by Content-Length (or chunked), and each client
connection has its own upstream connection, reused while the server keeps it open. Replies are
re-sent with a Content-Length, whatever framing the server used.

In-process, in a thread with its own event loop::

    with ChaosProxy("http://127.0.0.1:8000", rate=0.1, seed=1) as proxy:
        ...  # point the client at proxy.url; then read proxy.counts, proxy.exchanges

From the command line (prints ``PORT <n>`` once it listens; on SIGTERM or Ctrl-C writes its counts
as JSON to ``--counts``)::

    python tests/chaos_proxy.py --upstream http://127.0.0.1:8000 --rate 0.1 --seed 1 [--log F] [--counts F]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# Request and reply heads larger than this are refused (the stand-ins send a few hundred bytes).
HEAD_LIMIT = 1 << 20
REASONS = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable"}
# Headers about one hop's connection: the proxy speaks for itself on each side.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te",
              "trailer", "upgrade"}


@dataclass(frozen=True)
class Fault:
    """One kind of fault: whether the server gets the request, and whether the client gets its reply."""

    name: str
    forwarded: bool
    delivered: bool
    status: int | None = None
    retry_after: bool = False

    @property
    def wasted(self) -> bool:
        """The server did the work and the client never got it: the retry is paid for twice."""
        return self.forwarded and not self.delivered


def _status_faults(status: int, forwarded: bool) -> list[Fault]:
    return [Fault(f"http_{status}", forwarded, False, status),
            Fault(f"http_{status}_retry_after", forwarded, False, status, retry_after=True)]


FAULTS: dict[str, Fault] = {fault.name: fault for fault in [
    Fault("reset_before", forwarded=False, delivered=False),
    *_status_faults(429, forwarded=False),
    *_status_faults(503, forwarded=False),
    Fault("reset_after", forwarded=True, delivered=False),
    *_status_faults(500, forwarded=True),
    *_status_faults(502, forwarded=True),
    Fault("truncated", forwarded=True, delivered=False),
    Fault("dropped", forwarded=True, delivered=False),
    Fault("latency", forwarded=True, delivered=True),
    Fault("drip", forwarded=True, delivered=True),
]}


@dataclass
class Exchange:
    """One request through the proxy, as the test reads it afterwards."""

    number: int
    method: str
    path: str
    key: str  # sha256 of method, path and body: the request's identity
    attempt: int  # how many times the proxy had seen this request before
    fault: str | None
    arrived: float  # time.time()
    forwarded: bool = False
    delivered: bool = False  # the client was sent the server's whole reply
    status: int | None = None  # the server's status, when forwarded
    finished: float | None = None
    body: bytes | None = field(default=None, repr=False)


class ProxyError(Exception):
    """A request or reply the proxy cannot frame."""


@dataclass
class _Message:
    head: str  # request line or status line
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def encode(self, extra: list[tuple[str, str]] | None = None) -> bytes:
        """With a Content-Length and without hop-by-hop headers."""
        lines = [self.head] + [f"{k}: {v}" for k, v in self.headers if k.lower() not in HOP_BY_HOP]
        lines += [f"{k}: {v}" for k, v in extra or []]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


async def _read_message(reader: asyncio.StreamReader, *, request: bool, method: str = "") -> _Message | None:
    """One request or reply; None at a clean end of stream before its first byte."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProxyError("connection closed inside a message head") from None
    except asyncio.LimitOverrunError:
        raise ProxyError(f"message head over {HEAD_LIMIT} bytes") from None
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    message = _Message(lines[0], headers, b"")
    status = 0 if request else int(lines[0].split(" ", 2)[1])
    if not request and (method == "HEAD" or status in (204, 304) or 100 <= status < 200):
        return message
    length = message.header("content-length")
    if (message.header("transfer-encoding") or "").lower().endswith("chunked"):
        message.body = await _read_chunked(reader)
    elif length is not None:
        message.body = await reader.readexactly(int(length))
    elif not request:  # a reply without framing ends with its connection
        message.body = await reader.read()
    return message


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, ignored
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _unit(*parts: object) -> tuple[float, float]:
    """Two numbers in [0, 1) from a hash of ``parts``: the same parts, the same numbers."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    first, second = struct.unpack(">QQ", digest[:16])
    return first / 2**64, second / 2**64


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (RST), as a crashed peer or a killed load balancer does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


def _error_reply(fault: Fault, retry_after: float) -> bytes:
    assert fault.status is not None
    body = json.dumps({"error": {"message": f"injected {fault.name}", "code": fault.status}}).encode()
    extra = [("Content-Type", "application/json")]
    if fault.retry_after:
        extra.append(("Retry-After", f"{retry_after:g}"))
    return _Message(f"HTTP/1.1 {fault.status} {REASONS[fault.status]}", [], body).encode(extra)


class ChaosProxy:
    """The proxy; see the module docstring. ``counts`` (fault kind -> how many, and ``requests``,
    ``forwarded``, ``wasted``) and ``exchanges`` are read while it runs or after it stops."""

    def __init__(self, upstream: str, *, rate: float = 0.1, seed: int = 0, kinds: tuple[str, ...] = tuple(FAULTS),
                 max_in_a_row: int | None = 3, spare: tuple[str, ...] = (), latency: float = 0.5,
                 drip: float = 1.0, retry_after: float = 1.0, keep_bodies: bool = False,
                 log: Path | None = None, port: int = 0,
                 plan: Callable[[int, str], str | None] | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream: expected http://HOST:PORT, got {upstream!r}")
        unknown = sorted(set(kinds) - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(FAULTS)}")
        if not 0 <= rate <= 1:
            raise ValueError(f"rate: expected a fraction in [0, 1], got {rate}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.rate = rate
        self.seed = seed
        self.kinds = tuple(kinds)
        self.max_in_a_row = max_in_a_row
        self.spare = spare
        self.latency = latency
        self.drip = drip
        self.retry_after = retry_after
        self.keep_bodies = keep_bodies
        self.port = port
        self.plan = plan
        self.counts: Counter[str] = Counter()
        self.exchanges: list[Exchange] = []
        self._seen: Counter[str] = Counter()
        self._in_a_row: Counter[str] = Counter()
        self._log = open(log, "a", encoding="utf-8") if log else None  # noqa: SIM115 - closed in stop()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    # -- running --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self) -> None:
        """Listen on 127.0.0.1:``port`` (0: a free one, then in ``port``)."""
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port, limit=HEAD_LIMIT,
                                                  backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> ChaosProxy:
        """Serve from a thread with its own event loop; returns once it listens."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.serve())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="chaos-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
        if self._log is not None:
            self._log.close()
            self._log = None

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._connections):
            writer.transport.abort()

    def __enter__(self) -> ChaosProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    # -- the schedule -----------------------------------------------------------------------

    def _choose(self, key: str, path: str) -> tuple[Fault | None, int, float]:
        """(fault or None, attempt, a number in [0, 1) that sizes the fault) for this request."""
        attempt = self._seen[key]
        self._seen[key] += 1
        if any(path.split("?")[0].endswith(spared) for spared in self.spare):
            return None, attempt, 0.0
        if self.plan is not None:
            named = self.plan(len(self.exchanges), path)
            return (FAULTS[named] if named else None), attempt, 0.5
        draw, size = _unit(self.seed, key, attempt)
        capped = self.max_in_a_row is not None and self._in_a_row[key] >= self.max_in_a_row
        if draw >= self.rate or capped or not self.kinds:
            self._in_a_row[key] = 0
            return None, attempt, 0.0
        fault = FAULTS[self.kinds[int(size * len(self.kinds))]]
        # A fault that delivers the reply does not make the client ask again.
        self._in_a_row[key] = 0 if fault.delivered else self._in_a_row[key] + 1
        return fault, attempt, _unit(self.seed, key, attempt, "size")[0]

    # -- one client connection --------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    request = await _read_message(reader, request=True)
                except (ProxyError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                    return
                if request is None:
                    return
                upstream, keep_open = await self._exchange(request, writer, upstream)
                if not keep_open:
                    return
        finally:
            self._connections.discard(writer)
            if upstream is not None:
                upstream[1].close()
            if not writer.transport.is_closing():
                writer.close()

    async def _exchange(self, request: _Message, writer: asyncio.StreamWriter,
                        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
                        ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, bool]:
        """Serve one request; (the upstream connection to reuse, whether the client's stays open)."""
        method, path = request.head.split(" ")[:2]
        key = hashlib.sha256(f"{method} {path}\n".encode() + request.body).hexdigest()
        fault, attempt, size = self._choose(key, path)
        record = Exchange(len(self.exchanges), method, path, key, attempt, fault.name if fault else None,
                          time.time(), body=request.body if self.keep_bodies else None)
        self.exchanges.append(record)
        self.counts["requests"] += 1
        if fault is not None:
            self.counts[fault.name] += 1
        try:
            return await self._serve(request, record, fault, size, writer, upstream)
        finally:
            record.finished = time.time()
            if record.forwarded:
                self.counts["forwarded"] += 1
                if not record.delivered:
                    self.counts["wasted"] += 1
            if self._log is not None:
                entry = asdict(record)
                entry.pop("body")
                self._log.write(json.dumps(entry) + "\n")
                self._log.flush()

    async def _serve(self, request: _Message, record: Exchange, fault: Fault | None, size: float,
                     writer: asyncio.StreamWriter,
                     upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
                     ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, bool]:
        wants_close = (request.header("connection") or "").lower() == "close"
        if fault is not None and not fault.forwarded:
            if fault.status is None:
                _reset(writer)
                return upstream, False
            writer.write(_error_reply(fault, self.retry_after))
            await writer.drain()
            return upstream, not wants_close
        if fault is not None and fault.name == "latency":
            await asyncio.sleep(self.latency * (0.5 + size))
        try:
            if upstream is None:
                upstream = await asyncio.open_connection(*self.upstream, limit=HEAD_LIMIT)
            upstream[1].write(request.encode())
            await upstream[1].drain()
            record.forwarded = True
            reply = await _read_message(upstream[0], request=False, method=record.method)
            if reply is None:
                raise ProxyError("the server closed the connection without a reply")
        except (OSError, ProxyError, asyncio.IncompleteReadError, ValueError):
            # The stand-in itself failed (it died, say): the client sees the connection drop, as it
            # would without the proxy. Not an injected fault.
            self.counts["upstream_failures"] += 1
            if upstream is not None:
                upstream[1].close()
            _reset(writer)
            return None, False
        record.status = int(reply.head.split(" ", 2)[1])
        if (reply.header("connection") or "").lower() == "close" or reply.header("content-length") is None and \
                reply.header("transfer-encoding") is None:
            upstream[1].close()
            upstream = None
        data = reply.encode()
        try:
            if fault is None or fault.name == "latency":
                writer.write(data)
                await writer.drain()
            elif fault.status is not None:
                writer.write(_error_reply(fault, self.retry_after))
                await writer.drain()
                return upstream, not wants_close
            elif fault.name == "reset_after":
                _reset(writer)
                return upstream, False
            elif fault.name in ("truncated", "dropped"):
                head_end = data.index(b"\r\n\r\n") + 4
                writer.write(data[: head_end + len(reply.body) // 2])
                await writer.drain()
                if fault.name == "dropped":
                    _reset(writer)
                else:
                    writer.close()
                return upstream, False
            elif fault.name == "drip":
                await self._drip(writer, data, self.drip * (0.5 + size))
        except ConnectionError:
            return upstream, False
        record.delivered = True
        return upstream, not wants_close

    async def _drip(self, writer: asyncio.StreamWriter, data: bytes, seconds: float) -> None:
        """The head at once, then the body in about 20 pieces spread over ``seconds``."""
        head_end = data.index(b"\r\n\r\n") + 4
        writer.write(data[:head_end])
        await writer.drain()
        body = data[head_end:]
        steps = max(1, min(20, len(body)))
        piece = -(-len(body) // steps)
        for start in range(0, len(body), piece):
            await asyncio.sleep(seconds / steps)
            writer.write(body[start:start + piece])
            await writer.drain()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the stand-in server, http://HOST:PORT")
    parser.add_argument("--rate", type=float, default=0.1, help="share of requests that meet a fault")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(FAULTS), help="comma-separated fault kinds to draw from")
    parser.add_argument("--max-in-a-row", type=int, default=3, help="most faults one request meets in a row")
    parser.add_argument("--spare", action="append", default=[], help="path suffix passed through untouched")
    parser.add_argument("--latency", type=float, default=0.5, help="typical latency spike, seconds")
    parser.add_argument("--drip", type=float, default=1.0, help="typical time a dripped body takes, seconds")
    parser.add_argument("--retry-after", type=float, default=1.0, help="the Retry-After value sent")
    parser.add_argument("--log", type=Path, help="append one JSON line per request")
    parser.add_argument("--counts", type=Path, help="write the counts as JSON here on exit")
    args = parser.parse_args(argv)
    proxy = ChaosProxy(args.upstream, rate=args.rate, seed=args.seed, kinds=tuple(filter(None, args.kinds.split(","))),
                       max_in_a_row=args.max_in_a_row, spare=tuple(args.spare), latency=args.latency,
                       drip=args.drip, retry_after=args.retry_after, log=args.log, port=args.port)

    async def run() -> None:
        await proxy.serve()
        print(f"PORT {proxy.port}", flush=True)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await stop.wait()
        await proxy._close()

    try:
        asyncio.run(run())
    finally:
        if args.counts is not None:
            args.counts.write_text(json.dumps(proxy.summary()), encoding="utf-8")
        if proxy._log is not None:
            proxy._log.close()


if __name__ == "__main__":
    sys.exit(main())
