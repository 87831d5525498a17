"""``energymon demo``: a simulated cement plant run through the whole pipeline, with no external server.

Simulated Modbus TCP meters (real pymodbus servers on loopback) and a natural-gas flow meter publishing JSON on
an in-process MQTT bus are polled by the gateway, which publishes batches on an in-process uplink; the
processor turns them into energy, standard coal and the clinker's 单位产品综合能耗, writes everything to an
embedded SQLite store and feeds the alert engine. A summary is drawn in the terminal from the store, and the
live web page (:mod:`energymon.web`) shows the same plant overview on ``http://127.0.0.1:8787/`` unless turned off.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from prometheus_client import CollectorRegistry

from energymon.clock import ScaledClock
from energymon.config import ModbusRtuTcpBus, ModbusTcpBus, PlantConfig, SqliteStoreConfig, load_plant
from energymon.interfaces import Clock
from energymon.metrics import PipelineMetrics
from energymon.runtime import ProcessorService, build_gateway

__all__ = ["example_plant_path", "render_summary", "run_demo"]


def example_plant_path() -> Path:
    """Path of the shipped example plant file."""
    return Path(str(resources.files("energymon.examples").joinpath("cement_plant.yaml")))


def _with_ports(plant: PlantConfig, ports: dict[str, int]) -> PlantConfig:
    buses = [
        b.model_copy(update={"host": "127.0.0.1", "port": ports[b.id]})
        if isinstance(b, ModbusTcpBus | ModbusRtuTcpBus) and b.id in ports
        else b
        for b in plant.buses
    ]
    return plant.model_copy(update={"buses": buses})


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def render_summary(
    plant: PlantConfig, store: Any, service: ProcessorService, gateway: Any, clock: Clock, rate: float
) -> str:
    """The live summary, computed from the store and the stages' state."""
    tz = plant.enterprise.tz
    now = datetime.fromtimestamp(clock.now_ms() / 1000, tz)
    lines = [
        f"energymon demo · {plant.enterprise.name} · simulated time {now:%Y-%m-%d %H:%M:%S} ({tz.key}),"
        f" ×{clock.speed():g}",
        f"readings/s {rate:,.1f}   stored samples {store.count():,}   outbox {gateway.queue.depth()[0]} batch(es)",
        "",
        "Energy so far (enterprise meters)   consumed      standard coal (当量值)",
    ]
    by_meter = store.sum("energy", "consumed", group_by="meter")
    kgce_by_meter = store.sum("energy", "kgce", group_by="meter")
    consumed: dict[str, float] = {}
    kgce: dict[str, float] = {}
    for carrier, meter_ids in service.processor.accounting.enterprise_meters().items():
        consumed[carrier] = sum(by_meter.get(m, 0.0) for m in meter_ids)
        kgce[carrier] = sum(kgce_by_meter.get(m, 0.0) for m in meter_ids)
    unit_of = {m.carrier: plant.quantities(m)[m.counter][0] for m in plant.meters if m.carrier and m.counter}
    for carrier in sorted(consumed):
        lines.append(
            f"  {carrier:<14} {_fmt(consumed[carrier]):>16} {unit_of.get(carrier, ''):<5}"
            f" {_fmt(kgce.get(carrier, 0.0)):>16} kgce"
        )
    lines.append(f"  {'total':<14} {'':>22} {_fmt(sum(kgce.values())):>16} kgce")
    lines.append("")
    accounting = service.processor.accounting
    for product in plant.products:
        name = product.name or product.id
        latest = accounting.latest(product.id, "hour")
        if latest is None:
            lines.append(f"{name} 单位产品综合能耗: waiting for output")
            continue
        final = latest if not accounting.provisional(product.id, "hour", latest[0]) else None
        if final is None:
            # the running hour (or the first one after start-up) is an estimate: shown, never graded
            start, e, out, _ = latest
            hour = datetime.fromtimestamp(start / 1000, tz)
            lines.append(
                f"{name} 单位产品综合能耗 (hour from {hour:%H:%M}, 暂估 provisional): "
                f"{e / out:,.1f} kgce/{product.unit}   ({_fmt(e, 0)} kgce / {_fmt(out, 1)} {product.unit})"
            )
            lines.append("  暂估：本小时数据尚未覆盖整个时段，不分级"
                         " (provisional: the hour is not complete, not graded)")
            final = accounting.latest(product.id, "hour", final=True)
        if final is None:
            continue
        start, e, out, grade = final
        hour = datetime.fromtimestamp(start / 1000, tz)
        text = f"{name} 单位产品综合能耗 (hour from {hour:%H:%M}): {e / out:,.1f} kgce/{product.unit}"
        text += f"   ({_fmt(e, 0)} kgce / {_fmt(out, 1)} {product.unit})"
        lines.append(text)
        if grade is not None:
            lv = grade.levels
            lines.append(
                f"  标杆 {lv.benchmark:g} · 基准 {lv.baseline:g} kgce/{product.unit} → {grade.describe()}"
                + (f"  ({grade.gap_to_benchmark_pct:+.1f} % vs 标杆)" if grade.gap_to_benchmark_pct is not None else "")
            )
    lines.append("")
    active = service.alerts.active()
    if not active:
        lines.append("Active alerts: none")
    else:
        lines.append("Active alerts:")
        for alert in active:
            since = datetime.fromtimestamp(alert.started_ms / 1000, tz)
            lines.append(
                f"  [{alert.severity}] {alert.rule_id} on {alert.source}: {alert.state}"
                f" since {since:%H:%M:%S}, value {_fmt(alert.value)}" + (f" — {alert.summary}" if alert.summary else "")
            )
    return "\n".join(lines)


async def run_demo(
    *,
    speed: float = 60.0,
    duration_secs: float | None = None,
    plant_path: Path | None = None,
    data_dir: Path | None = None,
    refresh_secs: float = 1.0,
    out: TextIO = sys.stdout,
    web_port: int | None = None,
    web_host: str = "127.0.0.1",
) -> int:
    """Run the demo until ``duration_secs`` (real seconds) pass or SIGINT/SIGTERM; returns the exit code.

    ``web_port`` serves the live page there (0: a free port; None: no page); its URL is printed.
    """
    from energymon.simulators.plant import run_simulator
    from energymon.transport import open_transport

    path = plant_path or example_plant_path()
    plant = load_plant(path)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="energymon-demo-")
        data_dir = Path(tmp.name)
    data_dir.mkdir(parents=True, exist_ok=True)
    plant = plant.model_copy(
        update={
            "uplink": plant.uplink.model_copy(update={"url": "inproc://demo-uplink"}),
            "processor": plant.processor.model_copy(
                update={"store": SqliteStoreConfig(type="sqlite", path=data_dir / "energymon-demo.sqlite")}
            ),
        }
    )
    clock = ScaledClock(datetime.now(UTC), speed)
    metrics = PipelineMetrics(registry=CollectorRegistry())
    field = open_transport("inproc://field", client_id="demo-field-devices")
    await field.connect()

    async def publish(topic: str, payload: bytes) -> None:
        await field.publish(topic, payload, qos=1)

    modbus_buses = {b.id: 0 for b in plant.buses if isinstance(b, ModbusTcpBus | ModbusRtuTcpBus)}
    sim = await run_simulator(plant, clock, port_overrides=modbus_buses, publish=publish)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    service: ProcessorService | None = None
    web: Any = None
    web_line = ""
    try:
        plant = _with_ports(plant, sim.ports)
        service = ProcessorService(plant, clock=clock, metrics=metrics, data_dir=data_dir)
        await service.start()
        if web_port is not None:
            web, web_line = _start_web(plant, service, clock, web_host, web_port)
            print(web_line, file=out)
            out.flush()
        gateway = build_gateway(plant, data_dir=data_dir, clock=clock, metrics=metrics)
        gw_task = asyncio.create_task(gateway.run(stop))
        deadline = None if duration_secs is None else time.monotonic() + duration_secs
        draw = _drawer(out)
        last_n, last_t = 0.0, time.monotonic()
        while not stop.is_set():
            timeout = refresh_secs if deadline is None else max(0.0, min(refresh_secs, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=timeout)
            if gw_task.done():
                gw_task.result()  # surface a crash of the gateway
            n = metrics.registry.get_sample_value("energymon_received_total", {"stage": "gateway"}) or 0.0
            t = time.monotonic()
            rate = (n - last_n) / max(t - last_t, 1e-9)
            draw(render_summary(plant, service.store, service, gateway, clock, rate) + web_line)
            last_n, last_t = n, t
            if deadline is not None and t >= deadline:
                stop.set()
        await gw_task
    finally:
        stop.set()
        if web is not None:
            web.stop()
        if service is not None:
            await service.stop()
        await sim.stop()
        await field.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        if tmp is not None:
            tmp.cleanup()
    print("demo stopped cleanly", file=out)
    return 0


def _start_web(plant: PlantConfig, service: ProcessorService, clock: Clock, host: str, port: int) -> tuple[Any, str]:
    """Serve the live page over the demo's store and alert engine; a port in use only costs the page."""
    from energymon.processors.store import SqliteStore
    from energymon.web import Overview, SqliteReader, WebServer, alerts_from_engine

    if not isinstance(service.store, SqliteStore):
        return None, ""
    overview = Overview(
        plant, SqliteReader(service.store), clock=clock, alerts=alerts_from_engine(service.alerts),
        alerts_from="demo alert engine",
    )
    server = WebServer(overview, host=host, port=port)
    try:
        server.start()
    except OSError as exc:
        return None, f"\nlive page: cannot listen on {host}:{port}: {exc} (use --web-port N, or --no-web)"
    return server, f"\nlive page: {server.url}"


def _drawer(out: TextIO) -> Callable[[str], None]:
    tty = out.isatty()

    def draw(text: str) -> None:
        if tty:
            out.write("\x1b[H\x1b[2J" + text + "\n")
        else:
            out.write(text + "\n" + "-" * 72 + "\n")
        out.flush()

    return draw
