"""The plant overview the live page shows, computed from a :class:`~energymon.web.reader.StoreReader`.

One snapshot (a JSON-ready dict, see ``energymon/web/README.md`` for its shape) holds what the Grafana plant
overview holds: live power (or flow) per meter with the last hour, today's energy by carrier (consumed and kgce,
enterprise-level meters only, so sub-meters are not added to their parent), standard coal so far today, the
latest 单位产品综合能耗 of each product against its 标杆 and 基准 with the grade, data quality (meters unavailable or
silent) and the active alerts.

"Today" is the plant's local day of the clock's *now* (a fast simulated clock in the demo, the wall clock
otherwise); energy rows count when their interval ends in ``(day start, now]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

from energymon.clock import WallClock
from energymon.config import PlantConfig
from energymon.errors import StoreError
from energymon.interfaces import Clock
from energymon.periods import next_period_start, period_start
from energymon.web.reader import StoreReader

__all__ = [
    "PROVISIONAL_LABEL", "STATUS_LABELS", "AlertSource", "Overview", "alerts_from_engine", "alerts_from_state_file",
]

log = logging.getLogger(__name__)

#: Returns the active alerts as JSON-ready dicts (``id``, ``rule_id``, ``source``, ``state``, ``severity``...).
AlertSource = Callable[[], list[dict[str, Any]]]

#: ``status`` field of the ``indicator`` measurement → (Chinese, English) label.
STATUS_LABELS: dict[int, tuple[str, str]] = {
    1: ("达到标杆", "at benchmark"),
    2: ("标杆与基准之间", "between benchmark and baseline"),
    3: ("未达基准", "below baseline"),
    4: ("超过限额", "over the limit"),
}

_ALERT_KEYS = ("id", "rule_id", "source", "state", "severity", "summary", "value", "threshold", "started_ms",
               "fired_ms", "acked_ms", "acked_by")
_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
_INDICATOR_FIELDS = ["value", "energy_kgce", "output", "status", "benchmark", "baseline", "limit",
                     "gap_to_benchmark_pct", "provisional", "quota_grade"]
#: Label of a provisional period (its data do not cover the whole period yet): shown instead of a grade.
PROVISIONAL_LABEL = ("暂估（时段未完整，不分级）", "provisional: period not complete, not graded")
_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000
_PUSH_STALE_MS = 300_000  # meters that push (MQTT) without a poll interval: silent after 5 minutes
_STALE_FLOOR_MS = 60_000  # no meter is silent before a minute of real time without a reading


def _clean_alert(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in _ALERT_KEYS}


def _sorted_alerts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        records,
        key=lambda a: (a.get("state") != "firing", _SEVERITY_RANK.get(str(a.get("severity")), 9), str(a.get("id"))),
    )


def alerts_from_engine(engine: Any) -> AlertSource:
    """Active alerts of a running alert engine (``energymon.alerts.engine.AlertEngine.active``)."""

    def read() -> list[dict[str, Any]]:
        return _sorted_alerts([_clean_alert(a.to_dict()) for a in engine.active()])

    return read


def alerts_from_state_file(path: Path) -> AlertSource:
    """Active alerts in an alert state file (``alerts.sqlite`` of a processor's data directory).

    The file is opened on the first read that finds it, so the page may start before the processor.
    """
    from energymon.alerts.state import AlertStore

    opened: list[AlertStore] = []

    def read() -> list[dict[str, Any]]:
        if not opened:
            if not path.exists():
                return []
            opened.append(AlertStore(path))
        return _sorted_alerts([_clean_alert(r) for r in opened[0].active()])

    return read


class Overview:
    """Builds overview snapshots of one plant from its store.

    Args:
        plant: the plant configuration (meters, carriers, products, time zone).
        reader: the store to read.
        clock: *now* for "today" and the freshness of readings (default: the wall clock).
        alerts: where active alerts come from; None when unknown (the page says so).
        alerts_from: a description of the alert source for the page (e.g. the state file's path).
    """

    def __init__(
        self,
        plant: PlantConfig,
        reader: StoreReader,
        *,
        clock: Clock | None = None,
        alerts: AlertSource | None = None,
        alerts_from: str | None = None,
    ) -> None:
        from energymon.processors.rules import PlantRules
        from energymon.refdata import load_reference_data

        self.plant = plant
        self.reader = reader
        self.clock: Clock = clock or WallClock()
        self.alerts = alerts
        self.alerts_from = alerts_from
        self.tz = plant.enterprise.tz
        ref = load_reference_data()
        rules = PlantRules(plant, ref)
        self._rules = rules
        self._top_meters = rules.top_meters()
        names = {c.carrier: c.name_zh.split("（")[0] for c in ref.coefficients}
        self._carrier_names = {c: names.get(c, c) for c in self._top_meters}
        self._counter_unit = {
            m.id: plant.quantities(m)[m.counter][0] for m in plant.meters if m.counter is not None
        }
        self._indicator_units = {p.id: rules.indicator_unit(p.indicator) for p in plant.products}
        self._all_carrier_names = names
        self._process_names = {p.id: p.name or p.id for p in plant.processes}
        self._process_meters = _process_meters(plant)
        self._rules_by_id = {r.id: r for r in plant.alerts.rules}
        self._meters_by_id = {m.id: m for m in plant.meters}
        self._live: list[tuple[str, str, str]] = []  # (meter, quantity, unit) shown live
        for meter in plant.meters:
            quantities = plant.quantities(meter)
            pick = "power_active" if "power_active" in quantities else next(
                (q for q, (unit, kind, _) in quantities.items() if kind != "counter" and "/h" in unit), None
            )
            if pick is not None:
                self._live.append((meter.id, pick, quantities[pick][0]))
        intervals = {g.id: g.interval_secs for g in plant.gateway.poll_groups}
        # the floors are real time: on a clock ``speed`` times faster (the demo's --speed) a reading held up a
        # few real seconds by a busy machine is hours of event time late, and the meter is not silent for that
        speed = self.clock.speed()
        self._stale_ms: dict[str, int] = {}
        for meter in plant.meters:
            group = getattr(meter.source, "poll_group", None)
            interval = intervals.get(group) if isinstance(group, str) else None
            self._stale_ms[meter.id] = round(
                max(_PUSH_STALE_MS, _STALE_FLOOR_MS * speed) if interval is None
                else max(_STALE_FLOOR_MS * speed, 3 * interval * 1000)
            )

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> dict[str, Any]:
        """The overview now. Store failures are reported in ``error`` instead of raising."""
        now = self.clock.now_ms()
        day_start = period_start(now, "day", self.tz)
        out: dict[str, Any] = {
            "plant": {
                "name": self.plant.enterprise.name,
                "uscc": self.plant.enterprise.uscc,
                "timezone": self.tz.key,
            },
            "store": self.reader.describe(),
            "now_ms": now,
            "now_local": datetime.fromtimestamp(now / 1000, self.tz).isoformat(timespec="seconds"),
            "day_start_ms": day_start,
            "speed": self.clock.speed(),
            "error": None,
        }
        try:
            out["power"] = self._power(now)
            out.update(self._energy(day_start, now))
            out["indicators"] = self._indicators(now)
            out["trends"] = self._trends(now, day_start)
            if self.plant.building is not None:
                out["building"] = self._building(now)
            out["quality"] = self._quality(now)
        except StoreError as exc:
            log.warning("overview: %s", exc)
            out["error"] = str(exc)
        out["alerts_from"] = self.alerts_from
        out["alerts"] = None
        if self.alerts is not None:
            try:
                out["alerts"] = [{**a, "unit": self._alert_unit(a)} for a in self.alerts()]
            except Exception as exc:  # a locked or damaged state file must not take the page down
                log.warning("overview: alerts: %s", exc)
                out["alerts_error"] = f"{self.alerts_from}: {exc}"
        return out

    def _power(self, now: int) -> list[dict[str, Any]]:
        by_quantity: dict[str, list[tuple[str, str]]] = {}
        for meter_id, quantity, _ in self._live:
            by_quantity.setdefault(quantity, []).append((meter_id, quantity))
        latest: dict[tuple[str, str], tuple[int, float]] = {}
        history: dict[tuple[str, str], list[tuple[int, float]]] = {}
        start = now - _HOUR_MS
        for quantity in by_quantity:
            tags = {"quantity": quantity}
            for series_tags, ts, value in self.reader.latest("reading", "value", tags, at_ms=now, window_ms=_DAY_MS):
                latest[(series_tags.get("meter", ""), quantity)] = (ts, value)
            for series_tags, pairs in self.reader.samples("reading", "value", tags, start_ms=start, end_ms=now):
                history[(series_tags.get("meter", ""), quantity)] = _downsample(pairs, start, now, 120)
        names = {m.id: m.name or m.id for m in self.plant.meters}
        carriers = {m.id: m.carrier for m in self.plant.meters}
        out: list[dict[str, Any]] = []
        for meter_id, quantity, unit in self._live:
            ts_value = latest.get((meter_id, quantity))
            out.append({
                "meter": meter_id,
                "name": names[meter_id],
                "carrier": carriers[meter_id],
                "quantity": quantity,
                "unit": unit,
                "value": None if ts_value is None else ts_value[1],
                "ts_ms": None if ts_value is None else ts_value[0],
                "history": [[t, v] for t, v in history.get((meter_id, quantity), [])],
            })
        return out

    def _energy(self, day_start: int, now: int) -> dict[str, Any]:
        consumed = self.reader.sum("energy", "consumed", "meter", start_ms=day_start, end_ms=now)
        kgce = self.reader.sum("energy", "kgce", "meter", start_ms=day_start, end_ms=now)
        rows: list[dict[str, Any]] = []
        for carrier in sorted(self._top_meters):
            meters = self._top_meters[carrier]
            units = {self._counter_unit.get(m, "") for m in meters}
            rows.append({
                "carrier": carrier,
                "name": self._carrier_names[carrier],
                "meters": meters,
                "consumed": sum(consumed.get(m, 0.0) for m in meters),
                "unit": units.pop() if len(units) == 1 else "",
                "kgce": sum(kgce.get(m, 0.0) for m in meters),
            })
        return {"energy_today": rows, "kgce_today": sum(r["kgce"] for r in rows),
                "processes_today": self._processes(consumed, kgce)}

    def _processes(self, consumed: dict[str, float], kgce: dict[str, float]) -> list[dict[str, Any]]:
        """Today's energy per top-level process (工序): per carrier its top metering level present, like the
        enterprise, so a process's sub-meters are not added to its own meter."""
        out: list[dict[str, Any]] = []
        for process, meters in self._process_meters.items():
            carriers: list[dict[str, Any]] = []
            for carrier, ids in meters.items():
                units = {self._counter_unit.get(m, "") for m in ids}
                carriers.append({"carrier": carrier, "name": self._carrier_name(carrier), "meters": ids,
                                 "consumed": sum(consumed.get(m, 0.0) for m in ids),
                                 "unit": units.pop() if len(units) == 1 else "",
                                 "kgce": sum(kgce.get(m, 0.0) for m in ids)})
            out.append({"process": process, "name": self._process_names.get(process, process),
                        "kgce": sum(c["kgce"] for c in carriers), "carriers": carriers})
        return out

    def _trends(self, now: int, day_start: int) -> list[dict[str, Any]]:
        """Per product, its indicator today hour by hour and this month day by day, with the levels."""
        month_start = period_start(now, "month", self.tz)
        ends = {"hours": period_start(day_start + 36 * _HOUR_MS, "day", self.tz),
                "days": period_start(month_start + 32 * _DAY_MS, "month", self.tz)}
        out: list[dict[str, Any]] = []
        for product in self.plant.products:
            item: dict[str, Any] = {"product": product.id, "name": product.name or product.id,
                                    "unit": self._indicator_units[product.id]}
            for key, period, start in (("hours", "hour", day_start), ("days", "day", month_start)):
                tags = {"product": product.id, "indicator": product.indicator, "period": period}
                pairs: list[tuple[int, float]] = []
                for _tags, samples in self.reader.samples("indicator", "value", tags, start_ms=start - 1,
                                                          end_ms=now):
                    pairs += [(t, v) for t, v in samples if start <= t <= now]
                item[key] = [[t, v] for t, v in sorted(pairs)]
                item[f"{key}_start_ms"] = start
                item[f"{key}_end_ms"] = ends[key]
            out.append(item)
        return out

    def _carrier_name(self, carrier: str) -> str:
        return self._carrier_names.get(carrier) or self._all_carrier_names.get(carrier, carrier)

    def _alert_unit(self, alert: dict[str, Any]) -> str:
        """The unit of an alert's value and threshold (from its rule and source)."""
        rule = self._rules_by_id.get(str(alert.get("rule_id")))
        source = str(alert.get("source") or "")
        kind = getattr(rule, "kind", None)
        if kind == "threshold":
            meter = self._meters_by_id.get(getattr(rule, "meter", ""))
            quantity = getattr(rule, "quantity", "")
            return self.plant.quantities(meter)[quantity][0] if meter is not None else ""
        if kind == "indicator":
            return self._indicator_units.get(source, "")
        if kind in ("completeness", "budget"):
            return "%"
        if kind == "range":
            meter_id, _, quantity = source.partition(".")
            meter = self._meters_by_id.get(meter_id)
            if meter is not None and quantity in self.plant.quantities(meter):
                return self.plant.quantities(meter)[quantity][0]
        return ""

    def _indicators(self, now: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for product in self.plant.products:
            item: dict[str, Any] = {
                "product": product.id,
                "name": product.name or product.id,
                "indicator": product.indicator,
                "unit": self._indicator_units[product.id],
                "product_unit": product.unit,
            }
            levels = self._rules.levels(product.id, product.indicator, self._rules.local_date(now))
            if levels is not None and not levels.has_figures:
                item["no_figure"] = levels.missing  # 无数值: the area has no figure in the reference data
            for period, window in (("hour", 2 * _DAY_MS), ("day", 2 * _DAY_MS)):
                tags = {"product": product.id, "indicator": product.indicator, "period": period}
                found = self.reader.latest("indicator", "value", tags, at_ms=now, window_ms=window)
                if not found:
                    item[period] = None
                    continue
                _, start_ms, _ = max(found, key=lambda s: s[1])
                item[period] = self._indicator_entry(tags, period, start_ms, now)
            hour = item.get("hour")
            item["last_hour"] = None
            if hour is not None and hour["provisional"]:
                # beside the running hour's estimate, the grade of the hour before it (unless it is partial too)
                before = self._indicator_entry(tags | {"period": "hour"}, "hour",
                                               period_start(hour["start_ms"] - 1, "hour", self.tz), now)
                if before is not None and not before["provisional"]:
                    item["last_hour"] = before
            out.append(item)
        return out

    def _indicator_entry(self, tags: dict[str, str], period: str, start_ms: int, now: int) -> dict[str, Any] | None:
        """One period's indicator row as shown, or None if the store has no value for it."""
        fields = self.reader.row("indicator", _INDICATOR_FIELDS, tags, start_ms)
        if "value" not in fields:
            return None
        status = int(fields["status"]) if "status" in fields else None
        labels = STATUS_LABELS.get(status) if status is not None else None
        # an open period, or one the data cover only in part (the first hour after start-up), is an estimate:
        # its value is shown, its grade is not
        provisional = bool(fields.get("provisional")) or now < next_period_start(start_ms, period, self.tz)
        if provisional:
            labels = PROVISIONAL_LABEL
        quota = int(fields["quota_grade"]) if "quota_grade" in fields and not provisional else None
        return {
            "quota_grade": quota,
            "quota_label": None if quota is None else ("未达标" if quota == 4 else f"{quota}级"),
            "start_ms": start_ms,
            "start_local": datetime.fromtimestamp(start_ms / 1000, self.tz).isoformat(timespec="minutes"),
            **{f: fields.get(f) for f in _INDICATOR_FIELDS if f not in ("status", "provisional", "quota_grade")},
            "status": None if provisional else status,
            "provisional": provisional,
            "grade": labels[0] if labels else None,
            "grade_en": labels[1] if labels else None,
        }

    def _building(self, now: int) -> dict[str, Any]:
        """A public building's per-m² and per-person indicators for the year so far (processors.building)."""
        from energymon import units
        from energymon.processors.building import building_block

        assert self.plant.building is not None
        year_start = period_start(now, "year", self.tz)
        kgce = self.reader.sum("energy", "kgce", "meter", start_ms=year_start, end_ms=now)
        consumed = self.reader.sum("energy", "consumed", "meter", start_ms=year_start, end_ms=now)
        kwh = sum(units.convert(consumed.get(m, 0.0), self._counter_unit.get(m, "kWh"), "kWh")
                  for m in self._top_meters.get("electricity", []))
        year = datetime.fromtimestamp(year_start / 1000, self.tz).year
        year_days = (date(year + 1, 1, 1) - date(year, 1, 1)).days
        block = building_block(
            self.plant.building, kgce=sum(kgce.get(m, 0.0) for ms in self._top_meters.values() for m in ms),
            electricity_kwh=kwh, days=max(now - year_start, 1) / _DAY_MS, year_days=year_days,
        )
        block["since_ms"] = year_start
        return block

    def _quality(self, now: int) -> dict[str, Any]:
        good: dict[str, int] = {}
        for tags, ts, _ in self.reader.latest("reading", "value", None, at_ms=now, window_ms=_DAY_MS):
            meter_id = tags.get("meter", "")
            good[meter_id] = max(ts, good.get(meter_id, ts))
        bad: dict[str, tuple[int, list[str]]] = {}
        for tags, ts, _ in self.reader.latest("reading_unavailable", "count", None, at_ms=now, window_ms=_DAY_MS):
            meter_id = tags.get("meter", "")
            last, quantities = bad.get(meter_id, (ts, []))
            quantities.append(tags.get("quantity", ""))
            bad[meter_id] = (max(last, ts), quantities)
        newest = max(good.values(), default=None)
        unavailable: list[dict[str, Any]] = []
        silent: list[dict[str, Any]] = []
        for meter in self.plant.meters:
            last_good = good.get(meter.id)
            if meter.id in bad and (last_good is None or bad[meter.id][0] >= last_good):
                unavailable.append({"meter": meter.id, "name": meter.name or meter.id,
                                    "last_unavailable_ms": bad[meter.id][0], "last_good_ms": last_good,
                                    "quantities": sorted(bad[meter.id][1])})
            elif last_good is None or (newest is not None and newest - last_good > self._stale_ms[meter.id]):
                silent.append({"meter": meter.id, "name": meter.name or meter.id, "last_good_ms": last_good})
        return {
            "meters_total": len(self.plant.meters),
            "meters_ok": len(self.plant.meters) - len(unavailable) - len(silent),
            "unavailable": unavailable,
            "silent": silent,
            "latest_reading_ms": newest,
            # the 5 minutes up to the newest reading: how densely meters report, even when the store is a few real
            # seconds behind a fast clock (the demo's --speed), where the 5 minutes before *now* would be empty
            "readings_last_5min": 0 if newest is None else self.reader.count(
                "reading", "value", start_ms=newest - 300_000 + 1, end_ms=newest + 1),
        }


def _process_meters(plant: PlantConfig) -> dict[str, dict[str, list[str]]]:
    """Top-level process → carrier → the meters at the top metering level present for it in the process (and
    the units inside it)."""
    parent = {p.id: p.parent for p in plant.processes}

    def root(process: str) -> str:
        seen = set()
        while parent.get(process) and process not in seen:
            seen.add(process)
            process = str(parent[process])
        return process

    grouped: dict[str, dict[str, list[tuple[int, str]]]] = {}
    for meter in plant.meters:
        if meter.process is None or meter.carrier is None or meter.counter is None:
            continue
        level = int(meter.level) if meter.level is not None else 3
        grouped.setdefault(root(meter.process), {}).setdefault(meter.carrier, []).append((level, meter.id))
    out: dict[str, dict[str, list[str]]] = {}
    for p in plant.processes:
        if p.id not in grouped:
            continue
        out[p.id] = {}
        for carrier, entries in sorted(grouped[p.id].items()):
            top = min(level for level, _ in entries)
            out[p.id][carrier] = [m for level, m in entries if level == top]
    return out


def _downsample(pairs: list[tuple[int, float]], start: int, end: int, buckets: int) -> list[tuple[int, float]]:
    """The last sample of each of ``buckets`` equal slices of ``(start, end]`` (for a sparkline)."""
    if len(pairs) <= buckets:
        return pairs
    width = (end - start) / buckets
    last: dict[int, tuple[int, float]] = {}
    for ts, value in pairs:
        last[min(buckets - 1, int((ts - start - 1) // width))] = (ts, value)
    return [last[i] for i in sorted(last)]
