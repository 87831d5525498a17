"""The built-in live web page: the plant overview from the store, for plants without Grafana.

``energymon demo`` serves it for the simulated plant; ``energymon serve PLANT.yaml`` serves it over the plant's
store (SQLite file or VictoriaMetrics). See ``energymon/web/README.md``.
"""

from energymon.web.overview import Overview, alerts_from_engine, alerts_from_state_file
from energymon.web.reader import InfluxQLReader, SqliteReader, StoreReader, VictoriaMetricsReader
from energymon.web.server import DEFAULT_PORT, WebServer

__all__ = [
    "DEFAULT_PORT",
    "InfluxQLReader",
    "Overview",
    "SqliteReader",
    "StoreReader",
    "VictoriaMetricsReader",
    "WebServer",
    "alerts_from_engine",
    "alerts_from_state_file",
]
