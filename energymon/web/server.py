"""The live page's HTTP server: the page, a JSON snapshot and a Server-Sent Events stream.

Endpoints (GET only):

* ``/``: the page, with the current snapshot embedded so it shows data before any script request;
* ``/app.js``, ``/style.css``: the page's script and style (served from this package, nothing external);
* ``/api/overview``: the current snapshot as JSON;
* ``/api/stream``: ``text/event-stream``; one ``overview`` event with the snapshot each time it is recomputed
  (every ``refresh_s`` while anyone watches), a comment line every 15 s to keep proxies from closing it;
* ``/healthz``: ``ok``.

Snapshots are computed by one background thread, never per request, so many viewers cost the store one query set
per refresh; the thread idles when nobody has asked for a minute. A store or alert-file failure becomes an
``error`` in the snapshot; a client that goes away ends its own request quietly. The server runs in its own
threads and never raises into the process that hosts it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from energymon.web.overview import Overview

__all__ = ["DEFAULT_PORT", "LiveOverview", "WebServer"]

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
    daemon_threads = True
    block_on_close = False
    live: LiveOverview
    static: dict[str, bytes]

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, _DISCONNECTED):
            return
        log.warning("web page request from %s failed", client_address, exc_info=exc)


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    server_version = "energymon"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
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
    """

    def __init__(
        self, overview: Overview, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, refresh_s: float = 1.0
    ) -> None:
        self.live = LiveOverview(overview, refresh_s=refresh_s)
        self.host = host
        self.port = port
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
        httpd = _HttpServer((self.host, self.port), _Handler)
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
