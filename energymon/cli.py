"""The ``energymon`` command line."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from energymon import __version__, lifecycle
from energymon.errors import ConfigError, EnergymonError, InputError, UnreadableStoreError

if TYPE_CHECKING:
    import asyncio  # imported where a command runs an event loop: --help and validate start without it

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


#: Commands whose arguments are defined by their stage, in modules that import much (pandas, the provincial
#: uplink): name → (help, module, function adding the command to the subparsers). Only the command being run
#: is built from its module; the others are listed with their help, so ``energymon --help`` and the light
#: commands start without those imports. tests/test_cli_startup.py checks the help texts against the modules.
_STAGE_COMMANDS: dict[str, tuple[str, str, str]] = {
    "alerts": ("list, acknowledge and silence alerts; deliveries and dead letters (state file in the data dir)",
               "energymon.alerts.cli", "add_alerts_parser"),
    "uplink": ("upload to the provincial online-monitoring platform (with 补传)",
               "energymon.gateway.provincial.cli", "add_parser"),
    "simulate-platform": ("run a simulated provincial online-monitoring platform over HTTP",
                          "energymon.simulators.provincial_platform", "add_parser"),
    "probe": ("read one meter (or every meter of a bus) once: values, units, quality, raw registers or frames, "
              "the request plan", "energymon.probe", "add_parser"),
}


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (the first word that is not a global option or its value)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with every subcommand.

    ``argv``: the arguments about to be parsed; only the stage command they name (if any) is built from its
    module, the others are listed by name and help. None builds every command in full.
    """
    selected = None if argv is None else _command_of(argv)
    parser = argparse.ArgumentParser(
        prog="energymon",
        description="Energy-monitoring pipeline for key energy-consuming units (重点用能单位).",
    )
    parser.add_argument("--version", action="version", version=f"energymon {__version__}")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a plant file and report every problem with file, line and key")
    p.add_argument("plant", type=Path, help="plant YAML file")

    p = sub.add_parser("schema", help="print the plant file's JSON Schema (for editors' YAML completion and checks)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE", help="write it to FILE instead of stdout")

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
        help="first period shown, included: a day (YYYY-MM-DD) or a period start (YYYY-MM-DDTHH:MM); plant "
        "local time unless it has an offset (default: 7 days back)",
    )
    p.add_argument("--to", dest="end", metavar="ISO", default=None,
                   help="last period shown, included: a day (its whole day) or a period start (that period); "
                   "default: now")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    from energymon.processors import report_cli  # the arguments only: the report's imports come with main()

    for name, (text, module, adder) in _STAGE_COMMANDS.items():
        if argv is None or name == selected:
            getattr(importlib.import_module(module), adder)(sub)
        else:
            sub.add_parser(name, help=text)
        if name == "alerts":
            report_cli.add_arguments(sub.add_parser("report", help=report_cli.HELP))
    return parser


def _validate(path: Path) -> int:
    from energymon.config import load_plant
    from energymon.validators import plant_warnings

    plant = load_plant(path)
    print(
        f"{path}: OK — {plant.enterprise.name}: {len(plant.meters)} meters on {len(plant.buses)} buses, "
        f"{len(plant.products)} products, {len(plant.alerts.rules)} alert rules"
    )
    for key, message in plant_warnings(plant):
        print(f"{path}: warning: {key}: {message}")
    return 0


def _schema(out: Path | None) -> int:
    import json

    from energymon.plant_schema import plant_json_schema

    text = json.dumps(plant_json_schema(), ensure_ascii=False, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0


async def _until_stopped(stop: asyncio.Event, duration: float | None) -> None:
    """Wait for SIGTERM/SIGINT (one that came during start-up included) or the duration; then set ``stop``."""
    import asyncio

    with lifecycle.asyncio_stop(stop):
        if duration is None:
            await stop.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=duration)
    stop.set()


async def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from prometheus_client import REGISTRY, disable_created_metrics, start_http_server

    from energymon.clock import WallClock
    from energymon.config import load_plant
    from energymon.metrics import PipelineMetrics
    from energymon.runtime import ProcessorService, build_gateway

    plant = load_plant(args.config)
    if lifecycle.stop_requested():
        return 0  # stopped while loading: nothing was started
    metrics = PipelineMetrics(REGISTRY)
    if args.metrics_port is not None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series next to every counter
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=REGISTRY)
    clock = WallClock()
    stop = asyncio.Event()
    service = None
    gw_task = None
    try:
        if args.command in ("processor", "run"):
            service = ProcessorService(plant, clock=clock, metrics=metrics, data_dir=args.data_dir)
            await service.start()
        if args.command in ("gateway", "run"):
            gateway = build_gateway(plant, data_dir=args.data_dir, clock=clock, metrics=metrics)
            gw_task = asyncio.create_task(gateway.run(stop))
        await _until_stopped(stop, args.duration)
    finally:
        stop.set()
        if gw_task is not None:
            await gw_task
        if service is not None:
            await service.stop()
    return 0


async def _simulate(args: argparse.Namespace) -> int:
    import asyncio
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


#: Commands that run until stopped and stop cleanly on SIGTERM/SIGINT at any moment (see energymon.lifecycle);
#: the others get the default signal handling back once their arguments are parsed.
_LONG_RUNNING = frozenset({"gateway", "processor", "run", "serve", "simulate", "uplink", "simulate-platform"})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``energymon`` command."""
    lifecycle.install()  # first thing: a stop during start-up is a clean stop, not an unclean death
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["gateway", "history"]:  # `energymon gateway history ...` is `energymon history ...`
        argv = argv[1:]
    args = build_parser(argv).parse_args(argv)
    if args.command not in _LONG_RUNNING:
        if lifecycle.stop_requested():
            return 0
        lifecycle.restore_defaults()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pymodbus logs every timeout; energymon logs a device once when it drops and once when it recovers
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        if args.command == "validate":
            return _validate(args.plant)
        if args.command == "probe":
            from energymon import probe

            return probe.main(args)
        if args.command == "schema":
            return _schema(args.out)
        import asyncio  # the commands below run event loops

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
            import threading

            from energymon.simulators import provincial_platform

            stopped = threading.Event()
            with lifecycle.threading_stop(stopped):
                return provincial_platform.main(args, stop=stopped)
        return asyncio.run(_serve(args))
    except ConfigError as exc:
        print(f"error: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    except (InputError, UnreadableStoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EnergymonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
