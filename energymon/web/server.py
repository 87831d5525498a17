"""The live page's HTTP server: the page, a JSON snapshot and a Server-Sent Events stream.

Endpoints (GET only):

* ``/``: the page, with the current snapshot embedded so it shows data before any script request;
* ``/app.js``, ``/style.css``: the page's script and style (served from this package, nothing external);
* ``/api/overview``: the current snapshot as JSON;
* ``/api/stream``: ``text/event-stream``; one ``overview`` event with the snapshot each time it is recomputed
  (every ``refresh_s`` while anyone watches), a comment line every 15 s to keep proxies from closing it;
* ``/healthz``: ``ok`` (never behind the login, so a health probe needs no secret).

Bounds (see :class:`ServerLimits`): a connection must deliver its request line and headers within
``request_timeout_s`` from its first byte wait (a trickle of bytes does not extend it), an idle keep-alive
connection is closed after the same time, and a client that does not read what it is sent is dropped after it.
At most ``max_connections`` connections are served at once and at most ``max_streams`` of them are event
streams; beyond either the answer is ``503`` with ``Retry-After``, written by the accepting thread without
starting a handler thread. With :class:`WebAuth` every path but ``/healthz`` needs a token (``Authorization:
Bearer``, or as the password of HTTP basic auth so a browser can log in) or a user name and password; the
secret comes from an environment variable. The ``Server`` header is ``energymon`` with no version.

Snapshots are computed by one background thread, never per request, so many viewers cost the store one query set
per refresh; the thread idles when nobody has asked for a minute. A store or alert-file failure becomes an
``error`` in the snapshot; a client that goes away ends its own request quietly. The server runs in its own
threads and never raises into the process that hosts it.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from energymon.errors import ConfigError, ConfigIssue
from energymon.web.overview import Overview

__all__ = ["DEFAULT_PORT", "LiveOverview", "ServerLimits", "WebAuth", "WebServer"]

log = logging.getLogger(__name__)

#: Default port of ``energymon serve`` and of the demo's page.
DEFAULT_PORT = 8787

_STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
_CSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"
_KEEPALIVE_S = 15.0
_IDLE_AFTER_S = 60.0
_SNAPSHOT_MARK = "<!--snapshot-->"
_DISCONNECTED = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
_REAP_EVERY_S = 0.25
_LINGER_S = 1.0
_MAX_LINGERING = 256


@dataclass(frozen=True)
class ServerLimits:
    """Bounds of the live page's HTTP server.

    Attributes:
        request_timeout_s: seconds a connection has to send its whole request line and headers, an idle
            keep-alive connection is kept, and a send to a client may block.
        max_connections: connections served at once (event streams included); more get ``503``.
        max_streams: ``/api/stream`` event streams at once; more get ``503``.
    """

    request_timeout_s: float = 10.0
    max_connections: int = 64
    max_streams: int = 32

    def __post_init__(self) -> None:
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")
        if self.max_connections < 1 or self.max_streams < 1:
            raise ValueError("max_connections and max_streams must be at least 1")


@dataclass(frozen=True)
class WebAuth:
    """The login of the live page.

    Attributes:
        mode: ``token``: ``Authorization: Bearer <token>``, or the token as the password of basic auth (any user
            name); ``basic``: basic auth with exactly ``user:password``.
        secret: the token, or ``user:password``.
    """

    mode: str
    secret: str

    @staticmethod
    def from_env(mode: str, env: str, *, flag: str = "--auth-env") -> WebAuth:
        """The login whose secret is in environment variable ``env``.

        Raises:
            ConfigError: unknown mode, the variable is unset or empty, or a basic secret has no ``user:``.
        """
        if mode not in ("token", "basic"):
            raise ConfigError(flag, [ConfigIssue("auth", f"unknown login mode {mode!r}; use token or basic")])
        secret = os.environ.get(env, "")
        if not secret:
            raise ConfigError(flag, [ConfigIssue(env, "environment variable is not set or empty: the live "
                                                      "page's login secret")])
        if mode == "basic" and ":" not in secret[1:]:
            raise ConfigError(flag, [ConfigIssue(env, "basic login needs user:password in the variable")])
        return WebAuth(mode, secret)

    def allows(self, header: str | None) -> bool:
        """True when the ``Authorization`` header carries the secret."""
        if not header:
            return False
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self.mode == "token":
            try:
                raw = value.encode("latin-1")  # http.server decodes header bytes as latin-1; the secret is UTF-8
            except UnicodeEncodeError:
                raw = value.encode()
            return hmac.compare_digest(raw, self.secret.encode())
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        if self.mode == "token":
            return hmac.compare_digest(decoded.partition(":")[2].encode(), self.secret.encode())
        return hmac.compare_digest(decoded.encode(), self.secret.encode())


class LiveOverview:
    """Recomputes the overview every ``refresh_s`` while it is being watched and hands out the latest one.

    Args:
        overview: builds the snapshots.
        refresh_s: seconds between snapshots.
    """

    def __init__(self, overview: Overview, *, refresh_s: float = 1.0) -> None:
        self.overview = overview
        self.refresh_s = refresh_s
        self._cond = threading.Condition()
        self._seq = 0
        self._body = b""
        self._wanted = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Compute the first snapshot and start the refresh thread."""
        self._refresh()
        self._thread = threading.Thread(target=self._run, name="energymon-web-overview", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the refresh thread and wake every waiting stream."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def latest(self) -> tuple[int, bytes]:
        """``(sequence number, snapshot JSON)`` of the newest snapshot."""
        with self._cond:
            self._wanted = time.monotonic()
            return self._seq, self._body

    def wait_newer(self, seq: int, timeout_s: float) -> tuple[int, bytes]:
        """The newest snapshot once it is newer than ``seq``, or the same one after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._seq <= seq and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wanted = time.monotonic()
                self._cond.wait(min(left, 1.0))
            self._wanted = time.monotonic()
            return self._seq, self._body

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            with self._cond:
                idle = time.monotonic() - self._wanted > _IDLE_AFTER_S
            if not idle:
                self._refresh()

    def _refresh(self) -> None:
        try:
            snapshot = self.overview.snapshot()
        except Exception as exc:  # never let a bad row or a reader bug end the page
            log.exception("overview snapshot failed")
            snapshot = {"error": f"{type(exc).__name__}: {exc}"}
        with self._cond:
            self._seq += 1
            snapshot["seq"] = self._seq
            self._body = json.dumps(snapshot, ensure_ascii=False, separators=(",", ":")).encode()
            self._cond.notify_all()


class _HttpServer(ThreadingHTTPServer):
    """Thread per connection, with a cap, a deadline on reading each request and a reaper that enforces it."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # listen backlog: a burst of browsers is accepted, not left in SYN retries
    live: LiveOverview
    static: dict[str, bytes]
    limits: ServerLimits
    auth: WebAuth | None

    def __init__(self, address: tuple[str, int], limits: ServerLimits, auth: WebAuth | None) -> None:
        self.limits = limits
        self.auth = auth
        self._guard = threading.Lock()
        self._deadlines: dict[socket.socket, float] = {}  # connection -> end of its request read (inf: busy)
        self._streams = 0
        self._lingering: list[tuple[socket.socket, float]] = []
        self._reaper_stop = threading.Event()
        self.refused_total = 0
        super().__init__(address, _Handler)
        self._reaper = threading.Thread(target=self._reap, name="energymon-web-reaper", daemon=True)
        self._reaper.start()

    # -- connection accounting (the accepting thread and the handler threads)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._guard:
            full = len(self._deadlines) >= self.limits.max_connections
            if not full:
                self._deadlines[request] = time.monotonic() + self.limits.request_timeout_s
        if full:
            self.refused_total += 1
            log.debug("web page: %d connections open, refusing %s", self.limits.max_connections, client_address)
            self._refuse(request, b"too many connections\n")
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            with self._guard:
                self._deadlines.pop(request, None)
            raise

    def _refuse(self, sock: socket.socket, body: bytes) -> None:
        """Answer 503 from the accepting thread, without blocking it; the socket lingers a moment so the answer
        is not cut by a reset."""
        head = (f"HTTP/1.1 503 Service Unavailable\r\nServer: energymon\r\nRetry-After: 5\r\n"
                f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n").encode()
        try:
            sock.setblocking(False)
            sock.send(head + body)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.shutdown_request(sock)
            return
        with self._guard:
            if len(self._lingering) < _MAX_LINGERING:
                self._lingering.append((sock, time.monotonic() + _LINGER_S))
                return
        self.shutdown_request(sock)

    def close_request(self, request: Any) -> None:
        with self._guard:
            self._deadlines.pop(request, None)
        super().close_request(request)

    def reading(self, sock: socket.socket) -> None:
        """The connection waits for a (next) request: it has ``request_timeout_s`` to send it."""
        with self._guard:
            if sock in self._deadlines:
                self._deadlines[sock] = time.monotonic() + self.limits.request_timeout_s

    def busy(self, sock: socket.socket) -> None:
        """The request is read; the handler's own socket timeout bounds what follows."""
        with self._guard:
            if sock in self._deadlines:
                self._deadlines[sock] = float("inf")

    def open_stream(self) -> bool:
        """Take an event-stream slot; False when all are taken."""
        with self._guard:
            if self._streams >= self.limits.max_streams:
                return False
            self._streams += 1
            return True

    def close_stream(self) -> None:
        with self._guard:
            self._streams -= 1

    @property
    def open_connections(self) -> int:
        """Connections being served now."""
        with self._guard:
            return len(self._deadlines)

    # -- the reaper

    def _reap(self) -> None:
        while not self._reaper_stop.wait(_REAP_EVERY_S):
            now = time.monotonic()
            with self._guard:
                late = [s for s, d in self._deadlines.items() if d <= now]
                for sock in late:
                    self._deadlines[sock] = float("inf")  # shut down once; the handler thread closes it
                done = [s for s, t in self._lingering if t <= now]
                self._lingering = [(s, t) for s, t in self._lingering if t > now]
                waiting = [s for s, _ in self._lingering]
            for sock in late:
                log.debug("web page: connection sent no complete request within %.1f s; closing",
                          self.limits.request_timeout_s)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            for sock in waiting:
                _drain(sock)
            for sock in done:
                _drain(sock)
                with contextlib.suppress(OSError):
                    sock.close()

    def server_close(self) -> None:
        self._reaper_stop.set()
        self._reaper.join(timeout=5)
        with self._guard:
            lingering, self._lingering = self._lingering, []
        for sock, _ in lingering:
            with contextlib.suppress(OSError):
                sock.close()
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # a client that went away (reset, broken pipe, timeout): nothing to log
            return
        log.warning("web page request from %s failed", client_address, exc_info=exc)


def _drain(sock: socket.socket) -> None:
    """Read what a refused client sent, so closing its socket sends FIN, not a reset that hides the 503."""
    try:
        while select.select([sock], [], [], 0)[0]:
            if not sock.recv(65536):
                break
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    server_version = "energymon"
    protocol_version = "HTTP/1.1"
    connection: socket.socket

    def setup(self) -> None:
        self.timeout = self.server.limits.request_timeout_s  # type: ignore[misc]  # per connection: every recv, send
        super().setup()

    def version_string(self) -> str:
        return "energymon"  # no version of energymon or Python for a scanner to match

    def handle_one_request(self) -> None:
        self.server.reading(self.connection)
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.busy(self.connection)
        return ok

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _authorized(self) -> bool:
        auth = self.server.auth
        if auth is None or auth.allows(self.headers.get("Authorization")):
            return True
        body = "需要登录 login required\n".encode()
        self.send_response(HTTPStatus.UNAUTHORIZED)
        self.send_header("WWW-Authenticate", 'Basic realm="energymon", charset="UTF-8"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return False

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path != "/healthz" and not self._authorized():
                return
            if path in ("/", "/index.html"):
                self._page()
            elif path == "/api/overview":
                self._send(HTTPStatus.OK, "application/json; charset=utf-8", self.server.live.latest()[1])
            elif path == "/api/stream":
                self._stream()
            elif path == "/healthz":
                self._send(HTTPStatus.OK, "text/plain; charset=utf-8", b"ok\n")
            elif path.lstrip("/") in self.server.static and path != "/index.html":
                name = path.lstrip("/")
                self._send(HTTPStatus.OK, _TYPES[Path(name).suffix], self.server.static[name])
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")
        except _DISCONNECTED:
            self.close_connection = True

    def _page(self) -> None:
        _, body = self.server.live.latest()
        embedded = body.decode().replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        tag = f'<script id="snapshot" type="application/json">{embedded}</script>'
        page = self.server.static["index.html"].decode().replace(_SNAPSHOT_MARK, tag, 1)
        self._send(HTTPStatus.OK, _TYPES[".html"], page.encode())

    def _headers(self, status: HTTPStatus, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self._headers(status, content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        if not self.server.open_stream():
            self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
            self.send_header("Retry-After", "5")
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            body = b"too many event streams\n"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        try:
            self._stream_events()
        finally:
            self.server.close_stream()

    def _stream_events(self) -> None:
        live = self.server.live
        self._headers(HTTPStatus.OK, "text/event-stream; charset=utf-8")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        seq, body = live.latest()
        self.wfile.write(b"retry: 2000\nevent: overview\ndata: " + body + b"\n\n")
        self.wfile.flush()
        while not live.stopped:
            newer, body = live.wait_newer(seq, _KEEPALIVE_S)
            if live.stopped:
                break
            if newer == seq:
                self.wfile.write(b": keep-alive\n\n")
            else:
                seq = newer
                self.wfile.write(b"event: overview\ndata: " + body + b"\n\n")
            self.wfile.flush()


class WebServer:
    """The live page on ``http://host:port/``, served by a thread pool next to whatever hosts it.

    Args:
        overview: builds the snapshots.
        host: address to bind (default loopback only).
        port: TCP port; 0 picks a free one (see :attr:`port` after :meth:`start`).
        refresh_s: seconds between snapshots.
        limits: timeouts and connection caps.
        auth: the login; None serves without one.
    """

    def __init__(
        self, overview: Overview, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, refresh_s: float = 1.0,
        limits: ServerLimits | None = None, auth: WebAuth | None = None,
    ) -> None:
        self.live = LiveOverview(overview, refresh_s=refresh_s)
        self.host = host
        self.port = port
        self.limits = limits or ServerLimits()
        self.auth = auth
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Bind, compute the first snapshot and serve in background threads.

        Raises:
            OSError: the address cannot be bound (port taken, no such interface).
        """
        httpd = _HttpServer((self.host, self.port), self.limits, self.auth)
        httpd.static = {p.name: p.read_bytes() for p in _STATIC.iterdir() if p.suffix in _TYPES}
        httpd.live = self.live
        self.port = int(httpd.server_address[1])
        self._httpd = httpd
        self.live.start()
        self._thread = threading.Thread(target=httpd.serve_forever, name="energymon-web", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, end the streams and close the socket. Safe to call twice."""
        self.live.stop()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
