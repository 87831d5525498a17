"""The live page's HTTP server under hostile clients, over real sockets: half-sent requests are cut after the
request timeout (a trickle of bytes does not extend it) and ``/healthz`` still answers; the connection and
event-stream caps answer 503; the optional login answers 401 without the secret and 200 with it; the ``Server``
header carries no version."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from energymon import cli
from energymon.config import PlantConfig, SqliteStoreConfig, load_plant
from energymon.demo import example_plant_path
from energymon.errors import ConfigError
from energymon.processors.store import SqliteStore
from energymon.web import Overview, SqliteReader, WebServer
from energymon.web.server import ServerLimits, WebAuth

WAIT_S = 60.0


@pytest.fixture(scope="module")
def plant() -> PlantConfig:
    return load_plant(example_plant_path())


@pytest.fixture
def make_server(plant: PlantConfig, tmp_path: Path) -> Iterator[Callable[..., WebServer]]:
    servers: list[WebServer] = []
    store = SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / "s.sqlite"))

    def make(**kwargs: object) -> WebServer:
        server = WebServer(Overview(plant, SqliteReader(store)), port=0, refresh_s=0.2, **kwargs)  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
    store.close()


def wait_for(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def half_open(server: WebServer, first: bytes = b"GET / HTTP/1.1\r\nHost: x\r\n") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    sock.sendall(first)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def open_connections(server: WebServer) -> int:
    assert server._httpd is not None
    return server._httpd.open_connections


def test_half_sent_requests_are_closed_after_the_timeout_and_healthz_answers(
    make_server: Callable[..., WebServer],
) -> None:
    server = make_server(limits=ServerLimits(request_timeout_s=1.0, max_connections=400, max_streams=4))
    socks = [half_open(server) for _ in range(300)]
    try:
        assert all(closed_by_server(s) for s in socks)  # each recv waits up to WAIT_S for the server's close
        wait_for(lambda: open_connections(server) == 0, "the half-sent connections to be released")
        response = httpx.get(server.url + "healthz", timeout=WAIT_S)
        assert response.status_code == 200 and response.text == "ok\n"
    finally:
        for s in socks:
            s.close()


def test_a_trickle_of_bytes_does_not_extend_the_request_deadline(make_server: Callable[..., WebServer]) -> None:
    server = make_server(limits=ServerLimits(request_timeout_s=1.0))
    sock = half_open(server, b"GET / HTTP/1.1\r\n")
    sock.settimeout(0.2)
    sent = 0
    try:
        for _ in range(1500):  # up to 300 s of one header byte every 0.2 s
            try:
                sock.sendall(b"X")
                sent += 1
                if sock.recv(1024) == b"":
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            raise AssertionError("the server kept a trickling request open")
        assert sent >= 1
        assert httpx.get(server.url + "healthz", timeout=WAIT_S).status_code == 200
    finally:
        sock.close()


def test_idle_keep_alive_connections_are_closed(make_server: Callable[..., WebServer]) -> None:
    server = make_server(limits=ServerLimits(request_timeout_s=1.0))
    sock = half_open(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        answer = b""
        while b"ok\n" not in answer:
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        wait_for(lambda: open_connections(server) == 0, "the idle keep-alive connection to be closed")
        assert closed_by_server(sock)
    finally:
        sock.close()


def test_connection_cap_answers_503_then_recovers(make_server: Callable[..., WebServer]) -> None:
    server = make_server(limits=ServerLimits(request_timeout_s=600.0, max_connections=3))
    socks = [half_open(server) for _ in range(3)]
    try:
        wait_for(lambda: open_connections(server) == 3, "three connections held")
        for _ in range(5):
            refused = httpx.get(server.url + "healthz", timeout=WAIT_S)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
            assert refused.headers["server"] == "energymon"
        assert open_connections(server) == 3  # the refused ones took no handler
        socks.pop().close()
        wait_for(lambda: open_connections(server) == 2, "the closed connection to be released")
        assert httpx.get(server.url + "healthz", timeout=WAIT_S).status_code == 200
    finally:
        for s in socks:
            s.close()


def test_event_stream_cap(make_server: Callable[..., WebServer]) -> None:
    server = make_server(limits=ServerLimits(max_streams=1))
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http, http.stream("GET", "/api/stream") as first:
        assert first.status_code == 200
        lines = first.iter_lines()  # keep the iterator: dropping it closes the stream
        assert next(lines) == "retry: 2000"
        second = httpx.get(server.url + "api/stream", timeout=WAIT_S)
        assert second.status_code == 503 and second.headers["retry-after"] == "5"
        assert http.get("/api/overview").status_code == 200
        assert next(lines).startswith("event: ")  # the first viewer is still served
    # the slot is free again once the first viewer leaves
    def second_stream_ok() -> bool:
        with httpx.stream("GET", server.url + "api/stream", timeout=WAIT_S) as again:
            return again.status_code == 200

    wait_for(second_stream_ok, "the stream slot to be released")


def test_server_header_has_no_version(make_server: Callable[..., WebServer]) -> None:
    server = make_server()
    for path in ("", "healthz", "api/overview", "nope"):
        assert httpx.get(server.url + path, timeout=WAIT_S).headers["server"] == "energymon"


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_token_login(make_server: Callable[..., WebServer]) -> None:
    server = make_server(auth=WebAuth("token", "s3cret-tøken"))
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        for path in ("/", "/api/overview", "/api/stream", "/app.js", "/nope"):
            denied = http.get(path)
            assert denied.status_code == 401, path
            assert denied.headers["www-authenticate"].startswith("Basic realm=")
        assert http.get("/api/overview", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/api/overview", headers={"Authorization": "Bearer s3cret-tøken".encode()}).status_code == 200
        assert http.get("/", headers=_basic("anyone", "s3cret-tøken")).status_code == 200  # a browser's login
        assert http.get("/", headers=_basic("anyone", "wrong")).status_code == 401
        assert http.get("/", headers={"Authorization": "Basic !!not-base64"}).status_code == 401
        assert http.get("/healthz").status_code == 200  # probes need no secret


def test_basic_login(make_server: Callable[..., WebServer]) -> None:
    server = make_server(auth=WebAuth("basic", "能源:pa:ss"))
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        assert http.get("/api/overview").status_code == 401
        assert http.get("/api/overview", headers=_basic("能源", "pa:ss")).status_code == 200
        assert http.get("/api/overview", headers=_basic("other", "pa:ss")).status_code == 401
        assert http.get("/api/overview", headers={"Authorization": "Bearer pa:ss"}).status_code == 401


def test_login_secret_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_SECRET_T", "abc")
    assert WebAuth.from_env("token", "WEB_SECRET_T") == WebAuth("token", "abc")
    monkeypatch.delenv("WEB_SECRET_T")
    with pytest.raises(ConfigError, match="WEB_SECRET_T"):
        WebAuth.from_env("token", "WEB_SECRET_T")
    monkeypatch.setenv("WEB_SECRET_T", "no-colon")
    with pytest.raises(ConfigError, match="user:password"):
        WebAuth.from_env("basic", "WEB_SECRET_T")


def test_serve_refuses_to_start_without_the_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ENERGYMON_WEB_SECRET", raising=False)
    assert cli.main(["serve", str(example_plant_path()), "--auth", "token"]) == 2
    assert "ENERGYMON_WEB_SECRET" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", str(example_plant_path()), "--max-connections", "0"])
    assert exc.value.code == 2


def test_a_client_that_resets_its_connection_is_no_error(make_server: Callable[..., WebServer]) -> None:
    """A browser that closes its socket with a reset (RST) mid-request is simply gone: the server answers the
    next client, and nothing escapes from the request thread (pytest fails a test on an unhandled thread error)."""
    import struct

    server = make_server()
    for _ in range(5):
        sock = half_open(server)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        sock.close()
    wait_for(lambda: open_connections(server) == 0, "the reset connections to be closed")
    assert httpx.get(f"{server.url}/healthz", timeout=WAIT_S).status_code == 200
