"""The ``energymon`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from energymon import __version__
from energymon.errors import ConfigError, EnergymonError, InputError

__all__ = ["main"]

log = logging.getLogger("energymon")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="energymon",
        description="Energy-monitoring pipeline for key energy-consuming units (重点用能单位).",
    )
    parser.add_argument("--version", action="version", version=f"energymon {__version__}")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a plant file and report every problem with file, line and key")
    p.add_argument("plant", type=Path, help="plant YAML file")

    p = sub.add_parser("demo", help="run a simulated cement plant through the whole pipeline, no server needed")
    p.add_argument("--speed", type=_positive, default=60.0, help="simulated seconds per real second (default 60)")
    p.add_argument(
        "--duration", type=_positive, default=None, metavar="SECONDS", help="stop after this many real seconds"
    )
    p.add_argument("--config", type=Path, default=None, help="plant file (default: the shipped cement plant)")
    p.add_argument("--data-dir", type=Path, default=None, help="keep the store and outbox here (default: a temp dir)")
    p.add_argument("--refresh", type=_positive, default=1.0, metavar="SECONDS", help="summary refresh interval")
    p.add_argument("--web-port", type=int, default=8787, metavar="PORT",
                   help="serve the live page on this port (default 8787; 0 picks a free one)")
    p.add_argument("--web-host", default="127.0.0.1", help="address for the live page (default 127.0.0.1)")
    p.add_argument("--no-web", action="store_true", help="do not serve the live page")

    p = sub.add_parser("serve", help="serve the live web page (plant overview) over a plant's store")
    p.add_argument("plant", type=Path, help="plant YAML file (processor.store names the store to read)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8787, help="port to listen on (default 8787; 0 picks a free one)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="the processor's data directory, to show its active alerts (alerts.sqlite)")
    p.add_argument("--refresh", type=_positive, default=1.0, metavar="SECONDS", help="snapshot interval")
    p.add_argument("--duration", type=_positive, default=None, metavar="SECONDS", help="stop after this long")
    p.add_argument("--auth", choices=["token", "basic"], default=None,
                   help="require a login: a token (Bearer, or as basic-auth password) or basic user:password")
    p.add_argument("--auth-env", default="ENERGYMON_WEB_SECRET", metavar="VAR",
                   help="environment variable holding the token or user:password (default ENERGYMON_WEB_SECRET)")
    p.add_argument("--request-timeout", type=_positive, default=10.0, metavar="SECONDS",
                   help="time a connection has to send its request; idle keep-alive and blocked sends (default 10)")
    p.add_argument("--max-connections", type=_positive_int, default=64, metavar="N",
                   help="connections served at once; more get 503 (default 64)")
    p.add_argument("--max-streams", type=_positive_int, default=32, metavar="N",
                   help="event streams (/api/stream) at once; more get 503 (default 32)")

    p = sub.add_parser("simulate", help="serve simulated meters for a plant file (Modbus servers, MQTT meters)")
    p.add_argument("--config", type=Path, required=True, help="plant file")
    p.add_argument("--speed", type=_positive, default=1.0, help="simulated seconds per real second")
    p.add_argument("--duration", type=_positive, default=None, metavar="SECONDS")

    for name, text in (
        ("gateway", "run the edge gateway: poll meters, keep the outbox, publish to the uplink broker"),
        ("processor", "run the processor: subscribe, derive energy and indicators, write the store, alert"),
        ("run", "run gateway and processor in one process"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", type=Path, required=True, help="plant file")
        p.add_argument("--data-dir", type=Path, default=Path("energymon-data"), help="outbox, dead letters")
        p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on 127.0.0.1:PORT")
        p.add_argument("--metrics-host", default="127.0.0.1", help="address for the metrics endpoint")
        p.add_argument("--duration", type=_positive, default=None, metavar="SECONDS")

    p = sub.add_parser(
        "history",
        help="print the gateway's edge history of one item: 15-minute, hourly, daily or monthly values "
        "(also `energymon gateway history`)",
    )
    p.add_argument("--config", type=Path, required=True, help="plant file")
    p.add_argument("--data-dir", type=Path, default=Path("energymon-data"), help="the gateway's data directory")
    p.add_argument("--meter", required=True, help="meter id")
    p.add_argument("--quantity", required=True, help="quantity, e.g. energy_active_import")
    p.add_argument("--period", choices=["15min", "hour", "day", "month"], default="day")
    p.add_argument(
        "--from",
        dest="start",
        metavar="ISO",
        default=None,
        help="first period start, ISO 8601, plant local time unless it has an offset (default: 7 days back)",
    )
    p.add_argument("--to", dest="end", metavar="ISO", default=None, help="end, exclusive (default: now)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    from energymon.alerts.cli import add_alerts_parser
    from energymon.processors import report_cli

    add_alerts_parser(sub)
    report_cli.add_arguments(sub.add_parser("report", help=report_cli.HELP))
    from energymon.gateway.provincial import cli as uplink_cli
    from energymon.simulators import provincial_platform

    uplink_cli.add_parser(sub)
    provincial_platform.add_parser(sub)
    return parser


def _validate(path: Path) -> int:
    from energymon.config import load_plant

    plant = load_plant(path)
    print(
        f"{path}: OK — {plant.enterprise.name}: {len(plant.meters)} meters on {len(plant.buses)} buses, "
        f"{len(plant.products)} products, {len(plant.alerts.rules)} alert rules"
    )
    return 0


async def _until_stopped(stop: asyncio.Event, duration: float | None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if duration is None:
        await stop.wait()
    else:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=duration)
        stop.set()


async def _serve(args: argparse.Namespace) -> int:
    from prometheus_client import REGISTRY, disable_created_metrics, start_http_server

    from energymon.clock import WallClock
    from energymon.config import load_plant
    from energymon.metrics import PipelineMetrics
    from energymon.runtime import ProcessorService, build_gateway

    plant = load_plant(args.config)
    metrics = PipelineMetrics(REGISTRY)
    if args.metrics_port is not None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series next to every counter
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=REGISTRY)
    clock = WallClock()
    stop = asyncio.Event()
    service = None
    gw_task = None
    if args.command in ("processor", "run"):
        service = ProcessorService(plant, clock=clock, metrics=metrics, data_dir=args.data_dir)
        await service.start()
    if args.command in ("gateway", "run"):
        gateway = build_gateway(plant, data_dir=args.data_dir, clock=clock, metrics=metrics)
        gw_task = asyncio.create_task(gateway.run(stop))
    try:
        await _until_stopped(stop, args.duration)
    finally:
        stop.set()
        if gw_task is not None:
            await gw_task
        if service is not None:
            await service.stop()
    return 0


async def _simulate(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from energymon.clock import ScaledClock
    from energymon.config import load_plant
    from energymon.simulators.plant import run_simulator
    from energymon.transport import open_transport

    plant = load_plant(args.config)
    clock = ScaledClock(datetime.now(UTC), args.speed)
    transports = {}
    for bus in plant.buses:
        if bus.type == "mqtt":
            transports[bus.id] = open_transport(bus.url, client_id=f"energymon-sim-{bus.id}")
            await transports[bus.id].connect()
    # every MQTT meter publishes on the bus its meter entry names
    topic_bus = {m.source.topic: m.source.bus for m in plant.meters if m.source.type == "mqtt_json"}

    async def publish(topic: str, payload: bytes) -> None:
        await transports[topic_bus[topic]].publish(topic, payload, qos=1)

    sim = await run_simulator(plant, clock, publish=publish if transports else None)
    for bus_id, port in sim.ports.items():
        print(f"bus {bus_id}: serving on 127.0.0.1:{port}")
    stop = asyncio.Event()
    try:
        await _until_stopped(stop, args.duration)
    finally:
        await sim.stop()
        for t in transports.values():
            await t.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``energymon`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["gateway", "history"]:  # `energymon gateway history ...` is `energymon history ...`
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pymodbus logs every timeout; energymon logs a device once when it drops and once when it recovers
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        if args.command == "validate":
            return _validate(args.plant)
        if args.command == "demo":
            from energymon.demo import run_demo

            return asyncio.run(
                run_demo(
                    speed=args.speed,
                    duration_secs=args.duration,
                    plant_path=args.config,
                    data_dir=args.data_dir,
                    refresh_secs=args.refresh,
                    web_port=None if args.no_web else args.web_port,
                    web_host=args.web_host,
                )
            )
        if args.command == "serve":
            from energymon.web.serve import serve
            from energymon.web.server import ServerLimits, WebAuth

            auth = WebAuth.from_env(args.auth, args.auth_env) if args.auth else None
            limits = ServerLimits(request_timeout_s=args.request_timeout, max_connections=args.max_connections,
                                  max_streams=args.max_streams)
            return serve(args.plant, host=args.host, port=args.port, data_dir=args.data_dir,
                         refresh_s=args.refresh, duration_s=args.duration, limits=limits, auth=auth)
        if args.command == "simulate":
            return asyncio.run(_simulate(args))
        if args.command == "history":
            from energymon.gateway.history import history_command

            return history_command(
                args.config, args.data_dir, args.meter, args.quantity, args.period, args.start, args.end, args.format
            )
        if args.command == "report":
            from energymon.processors import report_cli

            return report_cli.main(args)
        if args.command == "alerts":
            from energymon.alerts.cli import alerts_main

            return alerts_main(args)
        if args.command == "uplink":
            from energymon.gateway.provincial import cli as uplink_cli

            return uplink_cli.main(args)
        if args.command == "simulate-platform":
            from energymon.simulators import provincial_platform

            return provincial_platform.main(args)
        return asyncio.run(_serve(args))
    except ConfigError as exc:
        print(f"error: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EnergymonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
