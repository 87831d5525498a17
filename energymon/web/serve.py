"""``energymon serve PLANT.yaml``: the live page over a plant's real store, next to a running processor.

The store is the one ``processor.store`` names: an SQLite file (read through
:class:`~energymon.processors.store.SqliteStore`; the processor may write it at the same time) or, for
``type: influxdb``, InfluxDB through InfluxQL (``/query``) or VictoriaMetrics' query API at the same URL, told
apart by ``processor.store.server`` (``auto``: by ``/ping``). A server that is neither is refused (exit 2).
Active alerts come from ``alerts.sqlite`` in
``--data-dir`` (the processor's data directory) when given.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TextIO

from energymon import lifecycle
from energymon.config import InfluxStoreConfig, PlantConfig, SqliteStoreConfig, load_plant
from energymon.errors import ConfigError, ConfigIssue, InputError
from energymon.web.overview import Overview, alerts_from_state_file
from energymon.web.reader import InfluxQLReader, SqliteReader, StoreReader, VictoriaMetricsReader
from energymon.web.server import DEFAULT_PORT, ServerLimits, WebAuth, WebServer

__all__ = ["open_reader", "serve"]


def open_reader(plant: PlantConfig, *, source: Path | None = None) -> StoreReader:
    """A reader of the store ``processor.store`` names.

    Raises:
        ConfigError: the plant file names no store.
        InputError: the SQLite file does not exist.
        StoreError: the SQLite file cannot be opened, or the server cannot be reached.
        UnreadableStoreError: the server is neither InfluxDB nor VictoriaMetrics.
    """
    cfg = plant.processor.store
    where = f"{source}: processor.store" if source is not None else "processor.store"
    if cfg is None:
        raise ConfigError(str(source or "plant"), [ConfigIssue("processor.store", "no store to show")])
    if isinstance(cfg, InfluxStoreConfig):
        from energymon.processors.store import InfluxStore

        store = InfluxStore(cfg)
        try:
            kind = store.server()  # StoreError if unreachable, UnreadableStoreError if neither kind
        except BaseException:
            store.close()
            raise
        if kind == "influxdb":
            return InfluxQLReader(store, owns=True)
        store.close()
        return VictoriaMetricsReader(cfg.url, timeout_s=cfg.timeout_ms / 1000)
    assert isinstance(cfg, SqliteStoreConfig)
    if not Path(cfg.path).is_file():
        raise InputError(f"{where}.path", f"SQLite store {cfg.path} does not exist; has the processor run? (the page "
                                          "never creates a store)")
    from energymon.processors.store import SqliteStore

    return SqliteReader(SqliteStore(cfg), owns=True)


def serve(
    plant_path: Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    data_dir: Path | None = None,
    refresh_s: float = 1.0,
    duration_s: float | None = None,
    out: TextIO = sys.stdout,
    limits: ServerLimits | None = None,
    auth: WebAuth | None = None,
) -> int:
    """Serve the page until SIGINT/SIGTERM or ``duration_s``; returns the exit code.

    Raises:
        ConfigError: the plant file is invalid or names no store.
        StoreError: the store cannot be opened.
        OSError: the address cannot be bound.
    """
    plant = load_plant(plant_path)
    reader = open_reader(plant, source=plant_path)
    alerts = None
    alerts_from = None
    if data_dir is not None:
        from energymon.alerts.state import STATE_FILE

        alerts_from = str(data_dir / STATE_FILE)
        alerts = alerts_from_state_file(data_dir / STATE_FILE)
    overview = Overview(plant, reader, alerts=alerts, alerts_from=alerts_from)
    server = WebServer(overview, host=host, port=port, refresh_s=refresh_s, limits=limits, auth=auth)
    stop = threading.Event()
    try:
        with lifecycle.threading_stop(stop):
            server.start()
            login = f", login: {auth.mode}" if auth is not None else ""
            print(f"energymon: live page of {plant.enterprise.name} on {server.url} ({reader.describe()}{login})",
                  file=out)
            out.flush()
            stop.wait(duration_s)
    finally:
        server.stop()
        reader.close()
    return 0
