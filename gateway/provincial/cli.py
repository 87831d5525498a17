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
        "uplink", help="upload to the provincial online-monitoring platform (with 补传)",
        description="Registration, configuration and data upload to the provincial 重点用能单位能耗在线监测 platform.")
    sub = p.add_subparsers(dest="uplink_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", required=True, help="plant file with a provincial section")
        q.add_argument("--now", default=None, help="act as of this local time (ISO 8601; default: now)")

    q = sub.add_parser("register", help="working key, registration, token, dictionaries and configuration uploads")
    common(q)
    q = sub.add_parser("sync", help="upload the registration and configuration records that changed")
    common(q)
    q = sub.add_parser("send", help="upload a day, a range, or everything missing (补传)")
    common(q)
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--day", help="local day YYYY-MM-DD")
    which.add_argument("--from", dest="date_from", help="first local day YYYY-MM-DD (with --to)")
    which.add_argument("--missing", action="store_true", help="every period not acknowledged within the horizon")
    q.add_argument("--to", dest="date_to", help="last local day YYYY-MM-DD, inclusive")
    q = sub.add_parser("status", help="per item and day: acknowledged, rejected, failed, blocked, missing")
    common(q)
    q.add_argument("--from", dest="date_from", help="first local day (default: the 补传 horizon)")
    q.add_argument("--to", dest="date_to", help="last local day, inclusive (default: today)")
    q.add_argument("--json", action="store_true", help="print JSON rows")
    q.add_argument("--problems", action="store_true", help="also list the quality gate's findings")
    q = sub.add_parser("run", help="run the scheduler until interrupted")
    common(q)
    q.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus self-metrics on this port")
    q.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
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
        print(f"energymon uplink: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"energymon uplink: {exc}", file=sys.stderr)
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
