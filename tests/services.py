"""Real services (Mosquitto, VictoriaMetrics, Alertmanager) started as subprocesses for tests.

Each service runs on a free loopback port, in its own temporary directory (configuration, data and a
``service.log`` file holding the process's stdout and stderr). ``start()`` waits until the service answers a
real protocol-level readiness probe, bounded by a timeout; on failure or timeout it raises
:class:`ServiceError` naming the service and quoting the last lines of its log. ``stop()`` sends SIGTERM,
then SIGKILL after a timeout, and deletes the temporary directory. ``restart()`` keeps the port and the
temporary directory, so persisted data survives it.

The binaries come from Debian packages installed by ``make test`` (``scripts/ensure-services.sh``). A missing
binary raises :class:`RuntimeError` through :func:`require_binary`; tests never skip silently.

Example:
    >>> with VictoriaMetrics() as vm:  # doctest: +SKIP
    ...     vm.export('{__name__=~"power_.*"}')
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "Alertmanager",
    "InfluxDB1",
    "Mosquitto",
    "Service",
    "ServiceError",
    "VictoriaMetrics",
    "free_port",
    "mqtt_connack",
    "require_binary",
]

#: Default bound on waiting for a service to become ready (generous for a loaded 2-core machine).
DEFAULT_START_TIMEOUT = 30.0
#: Default grace period between SIGTERM and SIGKILL.
DEFAULT_STOP_TIMEOUT = 10.0
#: Interval between readiness probes.
_POLL_INTERVAL = 0.05
#: Number of log lines quoted in error messages.
_LOG_TAIL_LINES = 40
#: Directories searched besides ``$PATH`` (``mosquitto`` is in /usr/sbin, often not on a user's PATH).
_EXTRA_BIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
#: Messages in a log that mean the chosen port was taken between :func:`free_port` and the bind.
_PORT_IN_USE_MARKERS = ("address already in use", "address in use")
#: How many times a first start retries on a fresh port after a port clash.
_PORT_RETRIES = 3


class ServiceError(RuntimeError):
    """A service failed to start, exited early, or did not become ready in time."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free at the time of the call.

    Returns:
        A port number chosen by the kernel (bind to port 0, then release it).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require_binary(name: str) -> str:
    """Locate an executable needed by the tests.

    Args:
        name: Executable name, e.g. ``"mosquitto"`` or ``"prometheus-alertmanager"``.

    Returns:
        The absolute path of the executable.

    Raises:
        RuntimeError: The executable is not installed; the message tells the user to run ``make test``.
    """
    search_path = os.pathsep.join([os.environ.get("PATH", os.defpath), *_EXTRA_BIN_DIRS])
    found = shutil.which(name, path=search_path)
    if found is None:
        raise RuntimeError(
            f"required binary {name!r} not found on PATH or in {', '.join(_EXTRA_BIN_DIRS)}. "
            "Run `make test` (it installs the Debian packages via scripts/ensure-services.sh), "
            "or run scripts/ensure-services.sh yourself."
        )
    return found


def _tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Tell whether a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


_RUNNING: weakref.WeakSet[Service] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """Stop services still running when the interpreter exits (e.g. after a crash in a test)."""
    for service in list(_RUNNING):
        with contextlib.suppress(Exception):
            service.stop(timeout=5.0)


class Service:
    """Base class: one subprocess on a loopback port, in its own temporary directory.

    Subclasses set :attr:`name`, build the command line in :meth:`_command` and implement the readiness
    probe :meth:`_ready`. They may write configuration files in :meth:`_prepare`.

    Attributes:
        name: Human-readable service name used in error messages.
        start_timeout: Bound in seconds on waiting for readiness.
        stop_timeout: Grace period in seconds between SIGTERM and SIGKILL.
    """

    name: ClassVar[str] = "service"
    binary: ClassVar[str] = ""

    def __init__(
        self,
        *,
        port: int | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        """Create a stopped service.

        Args:
            port: Port to listen on; a free one is chosen when omitted.
            start_timeout: Bound in seconds on waiting for readiness in :meth:`start`.
            stop_timeout: Seconds to wait after SIGTERM before sending SIGKILL in :meth:`stop`.
        """
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._fixed_port = port is not None
        self._port = port if port is not None else free_port()
        self._tmpdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.last_start_seconds: float | None = None

    # ----------------------------------------------------------------- properties

    @property
    def host(self) -> str:
        """Loopback address the service listens on."""
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """TCP port the service listens on (stable across :meth:`restart`)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the service."""
        return f"http://{self.host}:{self.port}"

    @property
    def workdir(self) -> Path:
        """The service's temporary directory (created on first :meth:`start`).

        Raises:
            ServiceError: The service was never started or has been stopped.
        """
        if self._tmpdir is None:
            raise ServiceError(f"{self.name}: not started, no working directory")
        return self._tmpdir

    @property
    def log_path(self) -> Path:
        """File collecting the process's stdout and stderr (appended to across restarts)."""
        return self.workdir / "service.log"

    @property
    def pid(self) -> int | None:
        """PID of the running process, or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # ----------------------------------------------------------------- hooks

    def _command(self) -> list[str]:
        """Return the command line; the first element is the resolved binary."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write configuration files into :attr:`workdir` before each launch."""

    def _ready(self) -> bool:
        """Return True when the service answers its protocol (called repeatedly until the timeout)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Launch the process and wait until it is ready.

        Returns:
            The service itself, for chaining.

        Raises:
            RuntimeError: The binary is missing (see :func:`require_binary`).
            ServiceError: The process exited early or was not ready within :attr:`start_timeout`.
        """
        with self._lock:
            if self.running:
                return self
            first_start = self._tmpdir is None
            if first_start:
                require_binary(self.binary)
                self._tmpdir = Path(tempfile.mkdtemp(prefix=f"energymon-{self.name.lower()}-"))
            attempts = _PORT_RETRIES if first_start and not self._fixed_port else 1
            for attempt in range(attempts):
                try:
                    self._launch_and_wait()
                    return self
                except ServiceError:
                    if attempt + 1 < attempts and self._port_clash():
                        self._port = free_port()
                        continue
                    raise
            raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float | None = None) -> None:
        """Stop the process (SIGTERM, SIGKILL after a timeout) and delete the temporary directory.

        Safe to call more than once and on a service that never started.

        Args:
            timeout: Seconds to wait after SIGTERM; defaults to :attr:`stop_timeout`.
        """
        with self._lock:
            self._terminate(self.stop_timeout if timeout is None else timeout)
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def restart(self) -> Self:
        """Stop the process and start it again on the same port, keeping the temporary directory.

        Returns:
            The service itself.

        Raises:
            ServiceError: The service did not become ready again.
        """
        with self._lock:
            self._terminate(self.stop_timeout)
        return self.start()

    def kill(self) -> None:
        """Stop the process abruptly with SIGKILL (no graceful shutdown), keeping the temporary directory.

        Useful to simulate a crash; call :meth:`start` to bring the service back on the same port.
        """
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=self.stop_timeout)
            self._proc = None
            _RUNNING.discard(self)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last lines of the service's log.

        Args:
            lines: Maximum number of lines.

        Returns:
            The lines joined by newlines, or a placeholder when there is no log.
        """
        if self._tmpdir is None:
            return "<no log: service not started>"
        try:
            with self.log_path.open("r", encoding="utf-8", errors="replace") as fh:
                tail = deque(fh, maxlen=lines)
        except OSError as exc:
            return f"<log unavailable: {exc}>"
        return "".join(tail).rstrip("\n") or "<log empty>"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.url} {state}>"

    # ----------------------------------------------------------------- internals

    def _launch_and_wait(self) -> None:
        """Launch the process once and poll readiness; on failure, terminate it and raise."""
        self._prepare()
        command = self._command()
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} launching: {' '.join(command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # keep Ctrl-C of pytest away from it; we stop it ourselves
            )
        _RUNNING.add(self)
        deadline = began + self.start_timeout
        proc = self._proc
        while True:
            code = proc.poll()
            if code is not None:
                self._proc = None
                _RUNNING.discard(self)
                raise self._error(f"exited with code {code} before becoming ready")
            try:
                if self._ready():
                    self.last_start_seconds = time.monotonic() - began
                    return
            except Exception:  # a probe that raises is simply "not ready yet"
                pass
            if time.monotonic() >= deadline:
                self._terminate(self.stop_timeout)
                raise self._error(f"not ready within {self.start_timeout:.0f} s")
            time.sleep(_POLL_INTERVAL)

    def _terminate(self, timeout: float) -> None:
        """SIGTERM the process, wait up to ``timeout`` seconds, then SIGKILL it."""
        proc = self._proc
        self._proc = None
        _RUNNING.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=timeout)

    def _port_clash(self) -> bool:
        """Tell whether the latest log lines report that the port was already in use."""
        tail = self.log_tail(10).lower()
        return any(marker in tail for marker in _PORT_IN_USE_MARKERS)

    def _error(self, what: str) -> ServiceError:
        return ServiceError(
            f"{self.name} on {self.host}:{self.port} {what}. "
            f"Last lines of {self.log_path}:\n{self.log_tail()}"
        )


class Mosquitto(Service):
    """A Mosquitto 2 MQTT broker with anonymous access on one loopback listener.

    Args:
        extra_conf: Text appended to the generated ``mosquitto.conf`` (extra listeners, TLS, ACLs...).
            Relative file names in it resolve against :attr:`workdir`, the process's working directory.
        persistence: Keep sessions and QoS 1/2 messages across :meth:`restart` (persistence file in
            :attr:`workdir`).
        port: Port to listen on; a free one is chosen when omitted.
        start_timeout: Bound in seconds on waiting for readiness.
        stop_timeout: Seconds between SIGTERM and SIGKILL.
    """

    name: ClassVar[str] = "Mosquitto"
    binary: ClassVar[str] = "mosquitto"

    def __init__(
        self,
        *,
        extra_conf: str = "",
        persistence: bool = False,
        port: int | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.extra_conf = extra_conf
        self.persistence = persistence

    @property
    def url(self) -> str:
        """Broker URL, ``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        """The generated ``mosquitto.conf``."""
        return self.workdir / "mosquitto.conf"

    def config_text(self) -> str:
        """Return the configuration file content written before each launch."""
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            # When run as root, mosquitto would switch to user "mosquitto", which cannot write our temp dir.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "max_queued_messages 100000",
        ]
        if self.persistence:
            data_dir = self.workdir / "data"
            data_dir.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {data_dir}/", "autosave_interval 1800"]
        else:
            lines.append("persistence false")
        text = "\n".join(lines) + "\n"
        if self.extra_conf:
            text += "\n# extra_conf\n" + self.extra_conf.rstrip("\n") + "\n"
        return text

    def _prepare(self) -> None:
        self.config_path.write_text(self.config_text(), encoding="utf-8")

    def _command(self) -> list[str]:
        return [require_binary(self.binary), "-c", str(self.config_path)]

    def _ready(self) -> bool:
        if not _tcp_open(self.host, self.port):
            return False
        return mqtt_connack(self.host, self.port, timeout=2.0)


def mqtt_connack(host: str, port: int, timeout: float = 5.0) -> bool:
    """Do one MQTT CONNECT/CONNACK round trip with paho-mqtt (clean session) and disconnect.

    Args:
        host: Broker address.
        port: Broker port.
        timeout: Bound in seconds on the whole exchange.

    Returns:
        True when the broker accepted the connection within the timeout.
    """
    accepted = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"readiness-{os.getpid()}-{time.monotonic_ns()}"
    )

    def on_connect(
        _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: ReasonCode, _properties: Any
    ) -> None:
        if not reason_code.is_failure:
            accepted.set()

    client.on_connect = on_connect
    deadline = time.monotonic() + timeout
    try:
        client.connect(host, port, keepalive=10)
        while not accepted.is_set() and time.monotonic() < deadline:
            client.loop(timeout=0.1)
        return accepted.is_set()
    except OSError:
        return False
    finally:
        # Sends DISCONNECT if the socket is open; paho closes the socket right after writing it.
        with contextlib.suppress(Exception):
            client.disconnect()


class VictoriaMetrics(Service):
    """A single-node VictoriaMetrics with settings that make tests deterministic.

    Flags: ``-retentionPeriod 100y`` (historic timestamps are accepted), ``-search.latencyOffset 0s`` (fresh
    samples are queryable at once), ``-dedup.minScrapeInterval 1ms`` (an identical sample written twice is
    stored once) and ``-storageDataPath`` inside :attr:`workdir` (kept across :meth:`restart`).

    Args:
        extra_args: Additional command-line flags, e.g. ``["-influxSkipSingleField"]``.
        port: Port to listen on; a free one is chosen when omitted.
        start_timeout: Bound in seconds on waiting for readiness.
        stop_timeout: Seconds between SIGTERM and SIGKILL.
    """

    name: ClassVar[str] = "VictoriaMetrics"
    binary: ClassVar[str] = "victoria-metrics"
    http_timeout: ClassVar[float] = 30.0

    def __init__(
        self,
        *,
        extra_args: list[str] | None = None,
        port: int | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.extra_args = list(extra_args or [])

    @property
    def data_path(self) -> Path:
        """The ``-storageDataPath`` directory."""
        return self.workdir / "data"

    def _command(self) -> list[str]:
        return [
            require_binary(self.binary),
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.data_path}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-dedup.minScrapeInterval=1ms",
            "-loggerLevel=INFO",
            *self.extra_args,
        ]

    def _ready(self) -> bool:
        response = httpx.get(f"{self.url}/health", timeout=2.0)
        return response.status_code == 200 and response.text.strip() == "OK"

    def _get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=self.http_timeout)
        response.raise_for_status()
        return response

    def flush(self) -> None:
        """Make every ingested sample visible to reads (``GET /internal/force_flush``)."""
        self._get("/internal/force_flush")

    def export(self, match: str, *, flush: bool = True) -> list[dict[str, Any]]:
        """Export raw samples (``GET /api/v1/export``).

        Args:
            match: Series selector, e.g. ``'power_active_w{meter="m1"}'`` or ``'{__name__=~"power_.*"}'``.
            flush: Call :meth:`flush` first.

        Returns:
            One dict per series with keys ``"metric"`` (labels incl. ``__name__``), ``"values"`` and
            ``"timestamps"`` (milliseconds), sorted by the metric's labels.
        """
        if flush:
            self.flush()
        # export ends at "now" by default; simulated clocks run ahead of it, so ask up to the year 2100
        text = self._get("/api/v1/export", {"match[]": match, "start": "1", "end": "4102444800"}).text
        rows: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines() if line.strip()]
        rows.sort(key=lambda row: sorted(row["metric"].items()))
        return rows

    def query(self, promql: str, time: float | None = None, *, flush: bool = True) -> dict[str, Any]:
        """Run an instant query (``GET /api/v1/query``).

        Args:
            promql: MetricsQL/PromQL expression.
            time: Evaluation time as Unix seconds; now when omitted.
            flush: Call :meth:`flush` first.

        Returns:
            The decoded JSON response (``{"status": "success", "data": {...}}``).
        """
        if flush:
            self.flush()
        params = {"query": promql}
        if time is not None:
            params["time"] = repr(float(time))
        result: dict[str, Any] = self._get("/api/v1/query", params).json()
        return result

    def series_count(self, match: str, *, flush: bool = True) -> int:
        """Count the series matching a selector over the whole time range (``GET /api/v1/series``).

        Args:
            match: Series selector.
            flush: Call :meth:`flush` first.

        Returns:
            Number of distinct series.
        """
        if flush:
            self.flush()
        # start=0 means "default range" (the last day) to VictoriaMetrics, so start at 1 s; end in 2100.
        params = {"match[]": match, "start": "1", "end": "4102444800"}
        data: list[dict[str, str]] = self._get("/api/v1/series", params).json()["data"]
        return len(data)


class InfluxDB1(Service):
    """An InfluxDB 1.x server (Debian's ``influxd`` 1.6.7): InfluxQL on ``/query``, line protocol on ``/write``.

    Meta, data and WAL directories are in :attr:`workdir` (kept across :meth:`restart`); reporting, the
    ``_internal`` monitor store and the HTTP log are off. The RPC/backup port (``bind-address``) is a second
    free port, so two servers never clash. Debian's 1.6 has no ``/api/v2/write``: write with ``api: v1``.

    Args:
        database: Database created once the server is ready (empty: none).
        admin: ``(user, password)``: enable authentication with this admin user (created at the first start).
        port: HTTP port; a free one is chosen when omitted.
        start_timeout: Bound in seconds on waiting for readiness.
        stop_timeout: Seconds between SIGTERM and SIGKILL.
    """

    name: ClassVar[str] = "InfluxDB"
    binary: ClassVar[str] = "influxd"
    http_timeout: ClassVar[float] = 30.0

    def __init__(
        self,
        *,
        database: str = "energymon",
        admin: tuple[str, str] | None = None,
        port: int | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.database = database
        self.admin = admin
        self.rpc_port = free_port()

    @property
    def config_path(self) -> Path:
        """The generated ``influxdb.conf``."""
        return self.workdir / "influxdb.conf"

    def config_text(self) -> str:
        """Return the configuration file content written before each launch."""
        root = self.workdir
        return (
            "reporting-disabled = true\n"
            f'bind-address = "{self.host}:{self.rpc_port}"\n'
            f'[meta]\n  dir = "{root / "meta"}"\n'
            f'[data]\n  dir = "{root / "data"}"\n  wal-dir = "{root / "wal"}"\n  query-log-enabled = false\n'
            "[monitor]\n  store-enabled = false\n"
            f'[http]\n  bind-address = "{self.host}:{self.port}"\n  log-enabled = false\n'
            f"  auth-enabled = {'true' if self.admin else 'false'}\n"
            '[logging]\n  level = "warn"\n'
        )

    def _prepare(self) -> None:
        self.config_path.write_text(self.config_text(), encoding="utf-8")

    def _command(self) -> list[str]:
        return [require_binary(self.binary), "run", "-config", str(self.config_path)]

    def _ready(self) -> bool:
        if httpx.get(f"{self.url}/ping", timeout=2.0).status_code != 204:
            return False
        if self.admin is not None:
            user, password = self.admin
            # allowed without credentials while no user exists; afterwards a no-op for the same user
            self.query(f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES", database="")
        if self.database:
            self.query(f'CREATE DATABASE "{self.database}"', database="")
        return True

    def query(self, influxql: str, *, database: str | None = None, epoch: str = "ms") -> list[dict[str, Any]]:
        """Run InfluxQL (``POST /query``) and return its ``results`` (raises on HTTP errors and statement errors).

        Args:
            influxql: One or more statements separated by ``;``.
            database: The ``db`` parameter; :attr:`database` when omitted, none when ``""``.
            epoch: Timestamp precision of the answer.
        """
        params = {"q": influxql, "epoch": epoch}
        db = self.database if database is None else database
        if db:
            params["db"] = db
        response = httpx.post(f"{self.url}/query", data=params, auth=self.admin, timeout=self.http_timeout)
        response.raise_for_status()
        results: list[dict[str, Any]] = response.json().get("results", [])
        for result in results:
            if "error" in result:
                raise ServiceError(f"{self.name} /query {influxql!r}: {result['error']}")
        return results

    def write(self, lines: str, *, database: str | None = None) -> None:
        """Write line protocol with ms timestamps (``POST /write``)."""
        params = {"db": self.database if database is None else database, "precision": "ms"}
        response = httpx.post(f"{self.url}/write", params=params, content=lines.encode(), auth=self.admin,
                              timeout=self.http_timeout)
        response.raise_for_status()


class Alertmanager(Service):
    """A Prometheus Alertmanager (Debian binary ``prometheus-alertmanager``) with clustering disabled.

    Args:
        config: Content of ``alertmanager.yml``.
        port: Port to listen on; a free one is chosen when omitted.
        start_timeout: Bound in seconds on waiting for readiness.
        stop_timeout: Seconds between SIGTERM and SIGKILL.
    """

    name: ClassVar[str] = "Alertmanager"
    binary: ClassVar[str] = "prometheus-alertmanager"

    def __init__(
        self,
        config: str,
        *,
        port: int | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.config = config

    @property
    def config_path(self) -> Path:
        """The written ``alertmanager.yml``."""
        return self.workdir / "alertmanager.yml"

    def _prepare(self) -> None:
        self.config_path.write_text(self.config, encoding="utf-8")
        (self.workdir / "data").mkdir(exist_ok=True)

    def _command(self) -> list[str]:
        return [
            require_binary(self.binary),
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--cluster.listen-address=",
            "--log.level=info",
        ]

    def _ready(self) -> bool:
        return httpx.get(f"{self.url}/-/ready", timeout=2.0).status_code == 200


class Prometheus(Service):
    """A Prometheus server (Debian binary ``prometheus``) with its configuration and rule files in :attr:`workdir`.

    Args:
        config: Content of ``prometheus.yml``; relative ``rule_files`` entries resolve against :attr:`workdir`.
        files: Further files to write into :attr:`workdir` before each launch (name → content), e.g. rule files.
        port: Port to listen on; a free one is chosen when omitted.
        start_timeout: Bound in seconds on waiting for readiness.
        stop_timeout: Seconds between SIGTERM and SIGKILL.

    Prometheus applies scrape targets a few seconds after it is ready; wait on :meth:`query` results, not on
    :meth:`start`.
    """

    name: ClassVar[str] = "Prometheus"
    binary: ClassVar[str] = "prometheus"

    def __init__(
        self,
        config: str,
        *,
        files: dict[str, str] | None = None,
        port: int | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.config = config
        self.files = dict(files or {})

    @property
    def config_path(self) -> Path:
        """The written ``prometheus.yml``."""
        return self.workdir / "prometheus.yml"

    def _prepare(self) -> None:
        self.config_path.write_text(self.config, encoding="utf-8")
        for name, content in self.files.items():
            path = self.workdir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")

    def _command(self) -> list[str]:
        return [
            require_binary(self.binary),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=info",
        ]

    def _ready(self) -> bool:
        return httpx.get(f"{self.url}/-/ready", timeout=2.0).status_code == 200

    def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET ``/api/v1/{path}`` and return its ``data`` (raises on HTTP or API errors)."""
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10.0)
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise ServiceError(f"{self.name} /api/v1/{path}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Run an instant query; returns the result vector (each item has ``metric`` and ``value``)."""
        data = self.api("query", {"query": promql})
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Prometheus holds (pending and firing), each with ``labels``, ``state`` and ``annotations``."""
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return found

    def alert_rule_names(self) -> list[str]:
        """Names of the alerting rules Prometheus has loaded, in file order."""
        groups = self.api("rules", {"type": "alert"})["groups"]
        return [rule["name"] for group in groups for rule in group["rules"]]
