"""``energymon uplink``: the provincial platform uplink from the command line.

    energymon uplink register --config plant.yaml      # working key, registration, token, dictionaries, configuration
    energymon uplink sync --config plant.yaml          # configuration uploads that changed (processes, gauges, items)
    energymon uplink send --config plant.yaml --day 2026-03-05
    energymon uplink send --config plant.yaml --from 2026-03-01 --to 2026-03-07
    energymon uplink send --config plant.yaml --missing # 补传: everything not acknowledged within the horizon
    energymon uplink status --config plant.yaml --from 2026-03-01 --to 2026-03-07
    energymon uplink run --config plant.yaml           # the scheduler: daily slot, real-time pushes, 补传

The password is read from the environment variable named by ``provincial.password_env``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from datetime import date, datetime, timedelta
from typing import Any

from energymon import lifecycle
from energymon.clock import WallClock
from energymon.config import load_plant
from energymon.errors import EnergymonError
from energymon.gateway.provincial.service import SendReport, UplinkService

__all__ = ["add_parser", "main"]


class _FixedClock:
    """The clock of ``--now``: a fixed instant."""

    def __init__(self, ms: int) -> None:
        self._ms = ms

    def now_ms(self) -> int:
        return self._ms

    def speed(self) -> float:
        return 1.0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``uplink`` (with its sub-commands) to an argparse subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "uplink", help="上传到省级能耗在线监测平台，含补传 (upload to the provincial online-monitoring platform)",
        description="向省级重点用能单位能耗在线监测平台注册、上传配置和数据 "
        "(registration, configuration and data upload to the provincial platform).")
    sub = p.add_subparsers(dest="uplink_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", required=True,
                       help="含 provincial 段的厂区配置文件 (plant file with a provincial section)")
        q.add_argument("--now", default=None, help="按此当地时间执行，ISO 8601，默认现在 (act as of this local time)")

    q = sub.add_parser("register",
                       help="工作密钥、注册、令牌、字典和配置上传 (working key, registration, token, configuration)")
    common(q)
    q = sub.add_parser("sync", help="上传有变化的注册和配置记录 (upload changed registration and configuration)")
    common(q)
    q = sub.add_parser("send",
                       help="上传某日、某区间或全部缺失数据（补传） (upload a day, a range or everything missing)")
    common(q)
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--day", help="当地日期 YYYY-MM-DD (local day)")
    which.add_argument("--from", dest="date_from", help="第一天 YYYY-MM-DD，与 --to 配合 (first local day)")
    which.add_argument("--missing", action="store_true",
                       help="补传期限内所有未确认的时段 (every period not acknowledged within the horizon)")
    q.add_argument("--to", dest="date_to", help="最后一天 YYYY-MM-DD（含） (last local day, inclusive)")
    q = sub.add_parser("status",
                       help="按数据项和日期：已确认、被拒、失败、拦截、缺失 (per item and day: upload status)")
    common(q)
    q.add_argument("--from", dest="date_from", help="第一天，默认补传期限起点 (first local day)")
    q.add_argument("--to", dest="date_to", help="最后一天（含），默认今天 (last local day, inclusive)")
    q.add_argument("--json", action="store_true", help="输出 JSON 行 (print JSON rows)")
    q.add_argument("--problems", action="store_true",
                   help="同时列出质量检查发现的问题 (also list the quality gate's findings)")
    q = sub.add_parser("run", help="运行上传调度，直到中断 (run the scheduler until interrupted)")
    common(q)
    q.add_argument("--metrics-port", type=int, default=None,
                   help="在此端口提供 Prometheus 自身指标 (Prometheus self-metrics port)")
    q.add_argument("--metrics-host", default="127.0.0.1",
                   help="指标端点地址，配合 --metrics-port (address for --metrics-port)")
    return p


def _day_ms(text: str, tz: Any) -> int:
    d = date.fromisoformat(text)
    return int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp() * 1000)


def _print_report(report: SendReport, out: Any) -> None:
    print(f"due {report.due}: acknowledged {report.acknowledged}, rejected {report.rejected}, failed {report.failed}, "
          f"blocked by the quality gate {report.blocked}, without a value yet {report.no_value} "
          f"({report.uploads} uploads)", file=out)
    for err in report.errors[:5]:
        print(f"  error: {err}", file=out)


def main(args: argparse.Namespace, out: Any = None) -> int:
    """Run ``energymon uplink <command>`` with parsed arguments. Returns the exit code."""
    stream = out or sys.stdout
    try:
        plant = load_plant(args.config)
        tz = plant.enterprise.tz
        if args.now:
            moment = datetime.fromisoformat(args.now)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=tz)
            clock: Any = _FixedClock(int(moment.timestamp() * 1000))
        else:
            clock = WallClock()
        metrics = None
        if getattr(args, "metrics_port", None) is not None:
            from prometheus_client import REGISTRY, disable_created_metrics, start_http_server

            from energymon.metrics import PipelineMetrics

            disable_created_metrics()  # type: ignore[no-untyped-call]
            metrics = PipelineMetrics(REGISTRY)
            start_http_server(args.metrics_port, addr=args.metrics_host, registry=REGISTRY)
        with UplinkService(plant, clock=clock, metrics=metrics) as service:
            return _run(args, service, tz, stream)
    except EnergymonError as exc:
        print(f"energymon uplink: 错误 (error): {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"energymon uplink: 错误 (error): {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, service: UplinkService, tz: Any, stream: Any) -> int:
    cmd = args.uplink_command
    if cmd in ("register", "sync"):
        sent = service.sync()
        done = ", ".join(f"{k} {n}" for k, n in sent.items()) or "nothing changed"
        print(f"registered (dataIndex {service.ledger.get_state('data_index')}), upload slot "
              f"{service.upload_time().isoformat()}, dictionaries version {service.ledger.get_state('dic_version')}; "
              f"sent: {done}", file=stream)
        return 0
    if cmd == "send":
        if args.missing:
            report = service.send_due()
        else:
            first = args.day or args.date_from
            last = args.day or args.date_to
            if not last:
                raise ValueError("--from needs --to")
            start = _day_ms(first, tz)
            end = _day_ms((date.fromisoformat(last) + timedelta(days=1)).isoformat(), tz)
            report = service.send_due(start_ms=start, end_ms=end)
        _print_report(report, stream)
        return 0 if not report.errors else 3
    if cmd == "status":
        now = service.clock.now_ms()
        start = _day_ms(args.date_from, tz) if args.date_from else service.horizon_start(now)
        end = _day_ms((date.fromisoformat(args.date_to) + timedelta(days=1)).isoformat(), tz) if args.date_to \
            else now
        rows = service.status(start, end)
        if args.json:
            print(json.dumps(rows, ensure_ascii=False, indent=1), file=stream)
        else:
            print(f"{'item':<20} {'period':<6} {'date':<10} {'expected':>8} {'acked':>6} {'rejected':>8} "
                  f"{'failed':>6} {'blocked':>7} {'missing':>7}", file=stream)
            for r in rows:
                print(f"{r['item']:<20} {r['period']:<6} {r['date']:<10} {r['expected']:>8} {r['acknowledged']:>6} "
                      f"{r['rejected']:>8} {r['failed']:>6} {r['blocked']:>7} {r['missing']:>7}"
                      + (f"  {'; '.join(r['messages'])}" if r["messages"] else ""), file=stream)
        if args.problems:
            for item, st, ms, check, detail, blocking in service.ledger.problems(start, end):
                when = datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M")
                print(f"problem {item} statType {st} {when}: {check}: {detail}"
                      + (" (blocked)" if blocking else ""), file=stream)
        incomplete = sum(r["missing"] + r["failed"] + r["rejected"] + r["blocked"] for r in rows)
        return 0 if incomplete == 0 else 4
    stop = threading.Event()
    with lifecycle.threading_stop(stop):  # SIGTERM/SIGINT (one during start-up included) stop it cleanly
        print(f"uplink running; daily slot {service.upload_time().isoformat()}", file=stream, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            service.run(stop, on_report=lambda r: _print_report(r, stream))
    return 0
