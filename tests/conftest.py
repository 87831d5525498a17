"""Pytest fixtures that start real services (see ``tests/services.py``).

Fixtures:
    mosquitto: a fresh Mosquitto broker per test (restartable; ``Mosquitto(persistence=True)`` for sessions).
    mosquitto_session: one broker shared by the whole session, for tests that never restart it.
    victoria_metrics: a fresh, empty VictoriaMetrics per test.
    victoria_metrics_session: one VictoriaMetrics shared by the session (use unique metric names).
    influxdb: a fresh InfluxDB 1.x (``influxd``) per test, with an empty database ``energymon``.
    alertmanager_factory: ``alertmanager_factory(config_yaml) -> Alertmanager``, started, stopped at teardown.

A missing service binary makes the test fail with a message telling the user to run ``make test``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:  # ``import services`` also works if tests/ becomes a package
    sys.path.insert(0, _TESTS_DIR)

from services import Alertmanager, InfluxDB1, Mosquitto, Service, VictoriaMetrics  # noqa: E402

_S = TypeVar("_S", bound=Service)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``integration`` marker."""
    config.addinivalue_line(
        "markers",
        "integration: talks to real services (Mosquitto, VictoriaMetrics, Alertmanager) started by fixtures",
    )


def _run(service: _S) -> Iterator[_S]:
    """Start ``service``, yield it, and always stop it (also when starting failed)."""
    try:
        service.start()
        yield service
    finally:
        service.stop()


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A Mosquitto broker on a free port, started for one test and stopped after it."""
    yield from _run(Mosquitto())


@pytest.fixture(scope="session")
def mosquitto_session() -> Iterator[Mosquitto]:
    """A Mosquitto broker shared by the whole test session; do not restart or stop it."""
    yield from _run(Mosquitto())


@pytest.fixture
def victoria_metrics() -> Iterator[VictoriaMetrics]:
    """An empty VictoriaMetrics on a free port, started for one test and stopped after it."""
    yield from _run(VictoriaMetrics())


@pytest.fixture(scope="session")
def victoria_metrics_session() -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics shared by the whole test session; use metric names unique to each test."""
    yield from _run(VictoriaMetrics())


@pytest.fixture
def influxdb() -> Iterator[InfluxDB1]:
    """An InfluxDB 1.x on free ports with an empty database ``energymon``, started for one test and stopped after."""
    yield from _run(InfluxDB1())


@pytest.fixture
def alertmanager_factory() -> Iterator[Callable[[str], Alertmanager]]:
    """Return ``make(config_yaml) -> Alertmanager``; every instance it started is stopped at teardown."""
    started: list[Alertmanager] = []

    def make(config: str) -> Alertmanager:
        manager = Alertmanager(config)
        started.append(manager)
        return manager.start()

    try:
        yield make
    finally:
        for manager in reversed(started):
            manager.stop()
