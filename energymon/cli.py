"""The ``energymon`` command line."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import re
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def _columns(text: str) -> int:
    """Terminal columns ``text`` takes: Chinese characters and full-width punctuation take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


_WIDE = r"\u2e80-\ua4cf\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6"  # CJK, full-width forms
#: A space, one wide character (a line may break before or after it), or a run of other characters (a word).
_TOKEN = re.compile(rf"\s+|[{_WIDE}]|[^\s{_WIDE}]+")
#: Punctuation that never starts a line (it stays with the character before it).
_NO_LINE_START = frozenset("，。、；：！？）」』】》")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, wrapping by terminal columns and between Chinese characters (help text is Chinese
    first; the standard one counts a Chinese character as one column and breaks only at spaces)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        lines: list[str] = []
        line, used, space = "", 0, False
        for token in _TOKEN.findall(text.strip()):
            if token.isspace():
                space = bool(line)
                continue
            gap = " " if space else ""
            cols = _columns(gap + token)
            if line and used + cols > width:
                if token in _NO_LINE_START and not gap:  # the character before it goes down with it
                    if len(line) < 2 or _columns(line[-1]) < 2 or line[-1] in _NO_LINE_START:  # or it hangs
                        line, used = line + token, used + cols
                        continue
                    line, token = line[:-1].rstrip(), line[-1] + token
                lines.append(line)
                line, used = token, _columns(token)
            else:
                line, used = line + gap + token, used + cols
            space = False
        if line:
            lines.append(line)
        return lines

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in self._split_lines(text, width - len(indent)))


class _Parser(argparse.ArgumentParser):
    """An argument parser using :class:`_HelpFormatter`; its subcommands' parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


#: Commands whose arguments are defined by their stage, in modules that import much (pandas, the provincial
#: uplink): name → (help, module, function adding the command to the subparsers). Only the command being run
#: is built from its module; the others are listed with their help, so ``energymon --help`` and the light
#: commands start without those imports. tests/test_cli_startup.py checks the help texts against the modules.
_STAGE_COMMANDS: dict[str, tuple[str, str, str]] = {
    "alerts": ("告警：列出、确认、静默；投递与死信（数据目录中的状态文件） "
               "(list, acknowledge and silence alerts; deliveries and dead letters)",
               "energymon.alerts.cli", "add_alerts_parser"),
    "uplink": ("上传到省级能耗在线监测平台，含补传 (upload to the provincial online-monitoring platform)",
               "energymon.gateway.provincial.cli", "add_parser"),
    "simulate-platform": ("运行模拟的省级在线监测平台 HTTP 服务 (run a simulated provincial platform over HTTP)",
                          "energymon.simulators.provincial_platform", "add_parser"),
    "probe": ("读一次表计（或一条总线上的所有表计）：数值、单位、质量、原始寄存器或报文、请求计划 "
              "(read one meter or every meter of a bus once)", "energymon.probe", "add_parser"),
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
    parser = _Parser(
        prog="energymon",
        description="重点用能单位能耗在线监测：采集、计算、存储、告警与省级上传 "
        "(energy-monitoring pipeline for key energy-consuming units).",
    )
    parser.add_argument("--version", action="version", version=f"energymon {__version__}")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="检查厂区配置文件，逐条列出问题所在的文件、行和键 (check a plant file)")
    p.add_argument("plant", type=Path, help="厂区配置文件 (plant YAML file)")

    p = sub.add_parser("schema",
                       help="输出厂区配置文件的 JSON Schema，供编辑器补全和检查 (print the plant file's JSON Schema)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="写入 FILE 而非标准输出 (write to FILE instead of stdout)")

    p = sub.add_parser("demo",
                       help="演示：模拟水泥厂走完整个流程，无需服务器 (run a simulated plant end to end)")
    p.add_argument("--speed", type=_positive, default=60.0,
                   help="每实际秒模拟的秒数，默认 60 (simulated seconds per real second)")
    p.add_argument(
        "--duration", type=_positive, default=None, metavar="SECONDS",
        help="运行这么多实际秒后停止 (stop after this many real seconds)"
    )
    p.add_argument("--config", type=Path, default=None, help="厂区配置文件，默认自带的水泥厂 (plant file)")
    p.add_argument("--data-dir", type=Path, default=None, help="存储和发件箱放在此目录，默认临时目录 (data directory)")
    p.add_argument("--refresh", type=_positive, default=1.0, metavar="SECONDS",
                   help="摘要刷新间隔，秒 (summary refresh interval)")
    p.add_argument("--web-port", type=int, default=8787, metavar="PORT",
                   help="实时网页端口，默认 8787，0 自动选择 (live page port)")
    p.add_argument("--web-host", default="127.0.0.1", help="实时网页地址，默认 127.0.0.1 (live page address)")
    p.add_argument("--no-web", action="store_true", help="不提供实时网页 (do not serve the live page)")

    p = sub.add_parser("serve",
                       help="提供实时网页（厂区总览），读取厂区的存储 (serve the live web page over a plant's store)")
    p.add_argument("plant", type=Path, help="厂区配置文件，processor.store 指定读取的存储 (plant YAML file)")
    p.add_argument("--host", default="127.0.0.1", help="监听地址，默认 127.0.0.1 (address to listen on)")
    p.add_argument("--port", type=int, default=8787, help="监听端口，默认 8787，0 自动选择 (port to listen on)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="处理器的数据目录，用于显示当前告警 alerts.sqlite (the processor's data directory)")
    p.add_argument("--refresh", type=_positive, default=1.0, metavar="SECONDS", help="快照间隔，秒 (snapshot interval)")
    p.add_argument("--duration", type=_positive, default=None, metavar="SECONDS",
                   help="运行这么久后停止，秒 (stop after this long)")
    p.add_argument("--auth", choices=["token", "basic"], default=None,
                   help="要求登录：令牌（Bearer 或作为 basic 密码）或 user:password (require a login)")
    p.add_argument("--auth-env", default="ENERGYMON_WEB_SECRET", metavar="VAR",
                   help="存放令牌或 user:password 的环境变量，默认 ENERGYMON_WEB_SECRET (environment variable)")
    p.add_argument("--request-timeout", type=_positive, default=10.0, metavar="SECONDS",
                   help="连接发送请求、空闲保持和阻塞发送的时限，秒，默认 10 (request timeout)")
    p.add_argument("--max-connections", type=_positive_int, default=64, metavar="N",
                   help="同时服务的连接数上限，超出返回 503，默认 64 (max connections)")
    p.add_argument("--max-streams", type=_positive_int, default=32, metavar="N",
                   help="同时打开的事件流 /api/stream 上限，超出返回 503，默认 32 (max event streams)")

    p = sub.add_parser("simulate",
                       help="按厂区配置文件提供模拟表计（Modbus 服务器、MQTT 表计） (serve simulated meters)")
    p.add_argument("--config", type=Path, required=True, help="厂区配置文件 (plant file)")
    p.add_argument("--speed", type=_positive, default=1.0,
                   help="每实际秒模拟的秒数 (simulated seconds per real second)")
    p.add_argument("--duration", type=_positive, default=None, metavar="SECONDS")

    for name, text in (
        ("gateway", "运行边缘网关：轮询表计、保存发件箱、发布到上行代理 (run the edge gateway)"),
        ("processor", "运行处理器：订阅、计算能耗与指标、写入存储、告警 (run the processor)"),
        ("run", "在一个进程中运行网关和处理器 (run gateway and processor in one process)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", type=Path, required=True, help="厂区配置文件 (plant file)")
        p.add_argument("--data-dir", type=Path, default=Path("energymon-data"),
                       help="数据目录：发件箱、死信 (data directory: outbox, dead letters)")
        p.add_argument("--metrics-port", type=int, default=None,
                       help="在此端口提供 Prometheus 指标 (serve Prometheus metrics on PORT)")
        p.add_argument("--metrics-host", default="127.0.0.1", help="指标端点地址 (address for the metrics endpoint)")
        p.add_argument("--duration", type=_positive, default=None, metavar="SECONDS")

    p = sub.add_parser(
        "history",
        help="显示网关上某一计量项的边缘历史：15 分钟、小时、日或月值 "
        "(print the gateway's edge history of one item; also `energymon gateway history`)",
    )
    p.add_argument("--config", type=Path, required=True, help="厂区配置文件 (plant file)")
    p.add_argument("--data-dir", type=Path, default=Path("energymon-data"),
                   help="网关的数据目录 (the gateway's data directory)")
    p.add_argument("--meter", required=True, help="计量点（表计）编号 (meter id)")
    p.add_argument("--quantity", required=True, help="计量量，如 energy_active_import (quantity)")
    p.add_argument("--period", choices=["15min", "hour", "day", "month"], default="day",
                   help="统计周期，默认 day (period)")
    p.add_argument(
        "--from",
        dest="start",
        metavar="ISO",
        default=None,
        help="显示的第一个周期（含）：某日 YYYY-MM-DD 或周期起点 YYYY-MM-DDTHH:MM；未带时区偏移时为厂区当地时间，"
        "默认 7 天前 (first period shown, included)",
    )
    p.add_argument("--to", dest="end", metavar="ISO", default=None,
                   help="显示的最后一个周期（含）：某日（整日）或周期起点（该周期）；默认现在 "
                   "(last period shown, included)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="输出格式：表格、CSV 或 JSON (output format)")
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
        print(f"已写入 {out} (wrote {out})", file=sys.stderr)
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
        print(f"错误：配置无效 (error: invalid configuration)\n{exc}", file=sys.stderr)
        return 2
    except (InputError, UnreadableStoreError) as exc:
        print(f"错误 (error): {exc}", file=sys.stderr)
        return 2
    except EnergymonError as exc:
        print(f"错误 (error): {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
