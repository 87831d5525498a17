"""``energymon alerts``: list, acknowledge and silence alerts in the state file of a data directory.

Works on ``<data dir>/alerts.sqlite`` while the processor runs (or not): acknowledgements and silences are
written to the file, and the running engine picks them up on its next tick (within a second)::

    energymon alerts list --data-dir /var/lib/energymon                 # active alerts (the default)
    energymon alerts list --history --rule meter_offline --since 2025-03-01T00:00:00+08:00
    energymon alerts ack meter_offline:kiln_drive --by 张工 --comment "RS-485 line replaced"
    energymon alerts silence --rule meter_offline --source kiln_drive --for-secs 7200 --comment "maintenance"
    energymon alerts silences                                             # silences still in force
    energymon alerts unsilence 3

``--json`` prints one JSON object per line instead of a table. Exit status: 0 done, 1 nothing to act on (no
state file, no such firing alert or silence), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from difflib import get_close_matches
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from energymon.alerts.outbox import DeliveryOutbox
from energymon.alerts.state import STATE_FILE, AlertStore
from energymon.clock import WallClock

__all__ = ["add_alerts_parser", "alerts_main"]


_TZ: tzinfo = UTC  # the plant's zone once the state file is open


def _iso_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, _TZ).isoformat(timespec="seconds").replace("+00:00", "Z")


def _since(text: str) -> int:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset; write e.g. {text}+08:00 or {text}Z")
    return round(when.timestamp() * 1000)


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_alerts_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``alerts`` command (with its subcommands) to ``energymon``'s subparsers and return its parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=Path("energymon-data"),
                        help="处理器的数据目录，存放 alerts.sqlite (the processor's data directory)")
    common.add_argument("--json", action="store_true", help="每行一个 JSON 对象 (one JSON object per line)")
    parser: argparse.ArgumentParser = sub.add_parser(
        "alerts", help="告警：列出、确认、静默；投递与死信（数据目录中的状态文件） "
        "(list, acknowledge and silence alerts; deliveries and dead letters)")
    cmds = parser.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")

    p = cmds.add_parser("list", parents=[common], help="当前告警（默认）或历史 (active alerts or the history)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--active", action="store_true", help="待触发和已触发的告警，默认 (pending and firing alerts)")
    which.add_argument("--history", action="store_true", help="全部事件：触发、升级、恢复、确认等 (every event)")
    p.add_argument("--rule", help="只看此规则编号 (only this rule id)")
    p.add_argument("--source", help="只看此来源：计量点、产品、网关等 (only this source)")
    p.add_argument("--since", type=_since, metavar="ISO", help="只看此时刻之后，须带 UTC 偏移 (only from this time on)")
    p.add_argument("--limit", type=int, default=1000, help="历史最多行数，保留最新 (history rows at most)")

    p = cmds.add_parser("ack", parents=[common], help="确认已触发的告警，不再提醒 (acknowledge a firing alert)")
    p.add_argument("id", help="告警编号 {rule}:{source} (alert id)")
    p.add_argument("--by", default="", help="确认人 (who acknowledges)")
    p.add_argument("--comment", default="", help="原因及处理措施 (why, what is being done)")

    p = cmds.add_parser("silence", parents=[common],
                        help="静默：一段时间内不通知某规则（及来源）的告警 (silence a rule for a while)")
    p.add_argument("--rule", required=True, help="规则编号 (rule id)")
    p.add_argument("--source", default=None, help="只静默此来源，默认该规则的全部来源 (only this source)")
    p.add_argument("--for-secs", type=_positive, required=True,
                   help="从现在起的时长，秒 (duration in seconds from now)")
    p.add_argument("--comment", required=True, help="原因，随静默保存 (why, kept with the silence)")
    p.add_argument("--by", default="", help="静默操作人 (who silences)")

    p = cmds.add_parser("silences", parents=[common], help="生效中的静默，--all 列出全部 (silences in force)")
    p.add_argument("--all", action="store_true", help="包括已结束的静默 (include ended silences)")

    p = cmds.add_parser("unsilence", parents=[common], help="立即结束静默 (end a silence now)")
    p.add_argument("silence_id", type=int, help="静默编号，见 'alerts silences' (silence id)")

    p = cmds.add_parser("deliveries", parents=[common],
                        help="等待投递的记录及死信 --dead (records waiting for delivery, and dead letters)")
    p.add_argument("--notifier", help="只看此通知器编号 (only this notifier id)")
    p.add_argument("--dead", action="store_true", help="只看死信 (only dead letters)")

    p = cmds.add_parser("replay", parents=[common],
                        help="重新投递死信，由运行中的处理器发送 (send dead letters again)")
    p.add_argument("--notifier", help="只看此通知器编号 (only this notifier id)")
    p.add_argument("delivery_ids", nargs="*", metavar="DELIVERY_ID",
                   help="只处理这些投递，默认全部 (only these deliveries)")

    p = cmds.add_parser("drop", parents=[common],
                        help="丢弃死信，死信文件仍保留 (forget dead letters)")
    p.add_argument("--notifier", help="只看此通知器编号 (only this notifier id)")
    p.add_argument("delivery_ids", nargs="*", metavar="DELIVERY_ID",
                   help="只处理这些投递，默认全部 (only these deliveries)")
    return parser


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)] + [r[-1]]
        print("  ".join(cells).rstrip(), file=out)


_WHAT_ZH = {"alert rule": "告警规则", "source (meter, item, product, gateway)": "来源（计量点、计量项、产品、网关）",
            "notifier": "通知器"}


def _refuse(what: str, name: str, known: Sequence[str]) -> str:
    hint = get_close_matches(name, list(known), n=1)
    text = f"错误：厂区配置中没有该{_WHAT_ZH.get(what, what)}；error: no {what} {name!r} in the plant"
    if hint:
        text += f" (did you mean {hint[0]!r}?)"
    elif known:
        text += f"; known: {', '.join(sorted(known)[:20])}"
    return text


def _check_names(args: argparse.Namespace, info: dict[str, Any] | None,
                 outbox_notifiers: Sequence[str] = ()) -> str | None:
    """A message for a rule, source or notifier the plant (as the processor last started) does not have.

    ``outbox_notifiers``: notifiers with records in the outbox (a removed one's dead letters can be listed and
    dropped)."""
    if info is None:
        return None
    rules, sources, notifiers = info.get("rules", []), info.get("sources", []), info.get("notifiers", [])
    rule = getattr(args, "rule", None)
    if rule is not None and rule not in rules:
        return _refuse("alert rule", rule, rules)
    source = getattr(args, "source", None)
    if source is not None and source not in sources:
        return _refuse("source (meter, item, product, gateway)", source, sources)
    notifier = getattr(args, "notifier", None)
    if notifier is not None and notifier not in notifiers:
        if notifier in outbox_notifiers:
            if args.alerts_command == "replay":
                return (f"错误：通知器已不在厂区配置文件中，无人发送其记录；error: notifier {notifier!r} is no longer "
                        f"in the plant file, so nothing would send its records; put it back and restart the processor, "
                        f"then replay, or forget them with "
                        f"'energymon alerts drop --notifier {notifier}'")
            return None
        return _refuse("notifier", notifier, notifiers)
    alert_id = getattr(args, "id", None)
    if isinstance(alert_id, str):
        a_rule, sep, a_source = alert_id.partition(":")
        if not sep:
            return (f"错误：告警编号格式应为 {{rule}}:{{source}}；error: {alert_id!r} is not an alert id; write "
                    "{rule}:{source}, e.g. meter_offline:kiln_drive")
        if a_rule not in rules:
            return _refuse("alert rule", a_rule, rules)
        if a_source not in sources:
            return _refuse("source (meter, item, product, gateway)", a_source, sources)
    return None


def alerts_main(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run ``energymon alerts ...`` on the state file in ``args.data_dir``; returns the exit status."""
    global _TZ
    out = out or sys.stdout
    data_dir = Path(args.data_dir)
    path = data_dir / STATE_FILE
    command = args.alerts_command
    if not path.is_file():
        why = "does not exist" if not data_dir.exists() else f"has no alert state file {STATE_FILE}"
        print(f"错误：数据目录中没有告警状态文件，未做任何更改；error: data directory {data_dir} {why} "
              "(is it the one the processor runs with, --data-dir?); nothing was changed", file=sys.stderr)
        return 2
    now = WallClock().now_ms()
    store = AlertStore(path)
    try:
        info = store.plant_info()
        if info is not None:
            try:
                _TZ = ZoneInfo(str(info.get("tz") or "UTC"))
            except (ZoneInfoNotFoundError, ValueError):
                _TZ = UTC
        problem = _check_names(args, info, _outbox_notifiers(path) if command in ("deliveries", "replay", "drop")
                               else ())
        if problem is not None:
            print(problem, file=sys.stderr)
            return 2
        if command == "list":
            return _list(store, args, out)
        if command == "ack":
            try:
                record = store.ack(args.id, by=args.by, comment=args.comment, at_ms=now)
            except KeyError:
                print(f"错误：没有此已触发的告警 (error: no firing alert {args.id!r})", file=sys.stderr)
                return 1
            if args.json:
                print(json.dumps({"acknowledged": record["id"], "by": args.by, "at_ms": now}, ensure_ascii=False),
                      file=out)
            else:
                print(f"acknowledged {record['id']} ({record['summary']})", file=out)
            return 0
        if command == "silence":
            ends = now + round(args.for_secs * 1000)
            silence = store.add_silence(args.rule, args.source, starts_ms=now, ends_ms=ends, comment=args.comment,
                                        by=args.by, created_ms=now)
            if args.json:
                print(json.dumps(silence.to_dict(), ensure_ascii=False), file=out)
            else:
                what = f"{args.rule}:{args.source}" if args.source else f"{args.rule} (every source)"
                print(f"silence {silence.id}: {what} until {_iso_ms(silence.ends_ms)}", file=out)
            return 0
        if command == "silences":
            silences = store.silences(active_at_ms=None if args.all else now)
            if args.json:
                for s in silences:
                    print(json.dumps(s.to_dict(), ensure_ascii=False), file=out)
            else:
                rows = [["id", "rule", "source", "until", "by", "comment"]] + [
                    [str(s.id), s.rule_id, s.source or "*", _iso_ms(s.ends_ms), s.by or "-", s.comment]
                    for s in silences
                ]
                _table(rows, out)
            return 0
        if command == "unsilence":
            if not store.expire_silence(args.silence_id, now):
                print(f"错误：没有生效中的此静默 (error: no silence {args.silence_id} in force)", file=sys.stderr)
                return 1
            print(f"silence {args.silence_id} ended", file=out)
            return 0
        if command in ("deliveries", "replay", "drop"):
            return _deliveries(path, args, out, now,
                               None if info is None else list(info.get("notifiers", [])))
        print(f"error: unknown alerts action {command!r}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _outbox_notifiers(path: Path) -> list[str]:
    outbox = DeliveryOutbox(path)
    try:
        return list(outbox.notifier_counts())
    finally:
        outbox.close()


def _deliveries(path: Path, args: argparse.Namespace, out: TextIO, now: int,
                plant_notifiers: Sequence[str] | None = None) -> int:
    outbox = DeliveryOutbox(path)
    try:
        if args.alerts_command in ("replay", "drop"):
            replay = args.alerts_command == "replay"
            removed: list[str] = []
            if replay:
                rows = outbox.replay(now, notifier=args.notifier, delivery_ids=args.delivery_ids, only=plant_notifiers)
                if plant_notifiers is not None:  # dead letters of notifiers removed from the plant file stay dead
                    known, wanted = set(plant_notifiers), set(args.delivery_ids)
                    stranded = [r for r in outbox.rows(notifier=args.notifier, dead=True)
                                if r.notifier not in known and (not wanted or r.delivery_id in wanted)]
                    removed = [r.delivery_id for r in stranded]
                    for r in stranded if wanted else ():
                        print(f"错误：此死信的通知器已不在厂区配置文件中；error: dead letter {r.delivery_id} is for "
                              f"notifier {r.notifier!r}, which is no longer in the plant file; put it back and "
                              "restart the processor to replay it, or drop it", file=sys.stderr)
                    if stranded and not wanted:
                        print(f"{len(stranded)} 条死信的通知器已不在厂区配置文件中，未重新投递；"
                              f"{len(stranded)} dead letter(s) of notifiers no longer in the plant file not replayed "
                              "(see 'energymon alerts deliveries --dead'; drop them or put the notifier back)",
                              file=sys.stderr)
            else:
                rows = outbox.drop(notifier=args.notifier, delivery_ids=args.delivery_ids)
            missing = set(args.delivery_ids) - {r.delivery_id for r in rows} - set(removed)
            for did in sorted(missing):
                print(f"错误：没有此死信 (error: no dead letter {did})", file=sys.stderr)
            for r in rows:
                if args.json:
                    print(json.dumps({"replayed" if replay else "dropped": r.delivery_id, "notifier": r.notifier,
                                      "alert_id": r.alert_id, "event": r.event, "version": r.version},
                                     ensure_ascii=False), file=out)
                else:
                    print(f"{'replaying' if replay else 'dropped'} {r.delivery_id}: {r.notifier} {r.alert_id} "
                          f"{r.event} v{r.version}", file=out)
            if not rows:
                print(f"没有死信；nothing to {args.alerts_command}: no dead letters"
                      + (f" for {args.notifier}" if args.notifier else ""), file=sys.stderr)
                return 1
            return 1 if missing or (removed and args.delivery_ids) else 0
        rows = outbox.rows(notifier=args.notifier, dead=True if args.dead else None)
        if args.json:
            for r in rows:
                print(json.dumps(r.to_dict(), ensure_ascii=False), file=out)
            return 0
        table = [["delivery", "notifier", "alert", "event", "v", "since", "attempts", "state", "last error"]] + [
            [r.delivery_id, r.notifier, r.alert_id, r.event, str(r.version), _iso_ms(r.created_ms), str(r.attempts),
             "dead " + _iso_ms(r.dead_ms) if r.dead_ms is not None else "next " + _iso_ms(r.next_ms),
             r.last_error or "-"]
            for r in rows
        ]
        _table(table, out)
        return 0
    finally:
        outbox.close()


def _list(store: AlertStore, args: argparse.Namespace, out: TextIO) -> int:
    if args.history:
        entries = store.history(rule_id=args.rule, source=args.source, since_ms=args.since, limit=args.limit)
        if args.json:
            for e in entries:
                print(json.dumps(e.to_dict(), ensure_ascii=False), file=out)
            return 0
        rows = [["at", "event", "alert", "severity", "v", "notified", "summary"]] + [
            [_iso_ms(e.at_ms), e.event, e.alert_id, e.severity, str(e.version), "yes" if e.notified else "no",
             (f"{e.by}: {e.comment}" if e.event == "acknowledged" else str(e.record.get("summary", "")))]
            for e in entries
        ]
        _table(rows, out)
        return 0
    records = store.active(rule_id=args.rule, source=args.source)
    if args.since is not None:
        records = [r for r in records if r["started_ms"] >= args.since]
    if args.json:
        for r in records:
            print(json.dumps(r, ensure_ascii=False), file=out)
        return 0
    rows = [["state", "severity", "alert", "since", "acked", "summary"]] + [
        [r["state"], r["severity"], r["id"], _iso_ms(r.get("fired_ms") or r["started_ms"]),
         r.get("acked_by") or ("yes" if r.get("acked_ms") else "-"), r.get("summary", "")]
        for r in records
    ]
    _table(rows, out)
    return 0
