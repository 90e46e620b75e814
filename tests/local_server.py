"""A real threaded HTTP server on 127.0.0.1 whose every answer a test scripts: statuses, delays,
bodies cut short, replies dripped a few bytes at a time. It runs in the test's own process, so a
pytester run (also in-process) can be pointed at it."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from typing_extensions import Self


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict | list = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    truncate: int | None = None  # announce the full length, send this many bytes, hang up
    drip: float = 0.0  # after the headers, send the body drip_bytes at a time, this many seconds apart
    drip_bytes: int = 1


class LocalServer:
    """A real threaded HTTP server; ``app(request, index) -> Reply`` scripts every answer.

    Records each request and the most requests it ever had in flight at once.
    """

    def __init__(self, app: Callable[[Request, int], Reply] | None = None) -> None:
        self.app = app or (lambda request, index: Reply(body={"ok": True, "path": request.path}))
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # a dripped byte goes out when it is written

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, self.path, dict(self.headers.items()), body, time.monotonic())
                with owner._lock:
                    index = len(owner.requests)
                    owner.requests.append(request)
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                try:
                    reply = owner.app(request, index)
                    if reply.delay:
                        time.sleep(reply.delay)
                finally:
                    with owner._lock:
                        owner.in_flight -= 1
                payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if reply.drip:
                        self.wfile.flush()
                        for at in range(0, len(payload), reply.drip_bytes):
                            time.sleep(reply.drip)
                            self.wfile.write(payload[at:at + reply.drip_bytes])
                            self.wfile.flush()
                        return
                    if reply.truncate is not None:
                        self.wfile.write(payload[: reply.truncate])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            do_GET = do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
