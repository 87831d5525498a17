"""The alert record as notifiers send it: one versioned JSON schema for the webhook, the MQTT topics, the
dead-letter files and the e-mail body (documented in ``alerts/README.md``, section *Payload*).

:func:`alert_payload` joins an :class:`~energymon.alerts.engine.Alert` with what the plant file says about it
(:class:`PayloadContext`, built once by :func:`payload_context`): the category of the rule (数据中断, 超限,
超限额, 完整率, ...), the quantity and unit of value and threshold, the rule's duration, the enterprise's name and
code, the source's name, the provincial gauge and data-item codes, and every time in UTC and in the plant's
local time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from energymon.alerts.engine import Alert, AlertState
from energymon.alerts_config import ThresholdRule
from energymon.config import PlantConfig

__all__ = ["CATEGORIES", "SCHEMA_VERSION", "PayloadContext", "RuleInfo", "SourceInfo", "alert_payload",
           "category_of", "payload_context"]

#: Version of the payload schema; it grows when a field changes meaning or goes away (new fields do not).
SCHEMA_VERSION = 2

#: Category code → the name regulators use.
CATEGORIES: dict[str, str] = {
    "data_interruption": "数据中断",
    "over_limit": "超限",
    "over_quota": "超限额",
    "below_baseline": "未达基准值",
    "completeness": "完整率",
    "over_budget": "超预算",
    "metering_fault": "计量异常",
    "calibration_due": "检定到期",
    "other": "其他",
}


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """What the payload says about a rule: its kind, category, the quantity and unit of value and threshold."""

    kind: str
    category: str
    quantity: str | None = None
    unit: str | None = None
    threshold_unit: str | None = None
    for_secs: float = 0.0
    keep_firing_for_secs: float = 0.0
    units_by_source: Mapping[str, tuple[str | None, str | None]] = field(default_factory=dict)
    quantity_by_source: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the payload says about a source: its kind, name, meter and the provincial codes mapped to it."""

    kind: str  # meter, item, product, gateway, scope
    name: str = ""
    meter: str | None = None
    meter_name: str = ""
    gauges: tuple[str, ...] = ()
    data_items: tuple[tuple[str, str], ...] = ()  # (item id, name registered with the platform)


@dataclass(frozen=True, slots=True)
class PayloadContext:
    """The plant's side of every record (empty: the record alone, e.g. a notifier built without a plant)."""

    enterprise_code: str | None = None
    enterprise_name: str | None = None
    tz: tzinfo | None = None
    rules: Mapping[str, RuleInfo] = field(default_factory=dict)
    sources: Mapping[str, SourceInfo] = field(default_factory=dict)


def category_of(kind: str, condition: str | None = None) -> str:
    """The category code of a rule kind (and, for ``indicator``, its condition)."""
    if kind == "indicator":
        return "below_baseline" if condition == "below_baseline" else "over_quota"
    return {
        "offline": "data_interruption",
        "threshold": "over_limit",
        "range": "over_limit",
        "completeness": "completeness",
        "budget": "over_budget",
        "counter_backwards": "metering_fault",
        "counter_reset": "metering_fault",
        "calibration_due": "calibration_due",
    }.get(kind, "metering_fault" if "counter" in kind else "other")


def _utc(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _local(ms: int | None, tz: tzinfo | None) -> str | None:
    if ms is None or tz is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="milliseconds")


def _handling(alert: Alert) -> str:
    if alert.state is AlertState.RESOLVED:
        return "resolved"
    return "acknowledged" if alert.acked_ms is not None else "open"


def alert_payload(alert: Alert, *, delivery_id: str | None, context: PayloadContext) -> dict[str, Any]:
    """The JSON-ready record of schema :data:`SCHEMA_VERSION` (without ``sent_at``, which each attempt adds)."""
    rule = context.rules.get(alert.rule_id)
    source = context.sources.get(alert.source)
    unit = threshold_unit = quantity = None
    if rule is not None:
        quantity, unit, threshold_unit = rule.quantity, rule.unit, rule.threshold_unit
        if alert.source in rule.units_by_source:
            unit, threshold_unit = rule.units_by_source[alert.source]
        quantity = rule.quantity_by_source.get(alert.source, quantity)
        if source is not None and source.kind == "item":
            quantity = alert.source.partition(".")[2] or quantity
    tz = context.tz
    out: dict[str, Any] = alert.to_dict()
    out.update({
        "schema_version": SCHEMA_VERSION,
        "delivery_id": delivery_id,
        "status": alert.state.value,
        "category": rule.category if rule is not None else "other",
        "category_name": CATEGORIES[rule.category if rule is not None else "other"],
        "rule_kind": rule.kind if rule is not None else None,
        "quantity": quantity,
        "unit": unit,
        "threshold_unit": threshold_unit,
        "for_secs": rule.for_secs if rule is not None else None,
        "keep_firing_for_secs": rule.keep_firing_for_secs if rule is not None else None,
        "handling": _handling(alert),
        "enterprise": context.enterprise_code,
        "enterprise_name": context.enterprise_name,
        "source_kind": source.kind if source is not None else None,
        "source_name": (source.name if source is not None else "") or alert.source,
        "meter": source.meter if source is not None else None,
        "meter_name": (source.meter_name or source.meter) if source is not None and source.meter else None,
        "provincial": None if source is None or not (source.gauges or source.data_items) else {
            "gauges": list(source.gauges),
            "data_items": [{"id": i, "name": n} for i, n in source.data_items],
        },
        "timezone": getattr(tz, "key", None) or (str(tz) if tz is not None else None),
    })
    for name in ("started", "fired", "resolved", "escalated", "acked"):
        ms = getattr(alert, f"{name}_ms")
        out[f"{name}_at"] = _utc(ms)
        out[f"{name}_local"] = _local(ms, tz)
    began = None
    if rule is not None and rule.category == "data_interruption" and alert.threshold is not None:
        began = alert.started_ms - round(alert.threshold * 1000)  # the last good reading: start − the timeout
    out["outage_began_ms"] = began
    out["outage_began_at"] = _utc(began)
    out["outage_began_local"] = _local(began, tz)
    return out


def payload_context(plant: PlantConfig) -> PayloadContext:
    """Everything the payload says about the plant: rule categories and units, source names, provincial codes."""
    meters = {m.id: m for m in plant.meters}
    units: dict[str, dict[str, str]] = {m.id: {q: u for q, (u, _k, _c) in plant.quantities(m).items()}
                                        for m in plant.meters}
    gauges: dict[str, list[str]] = {}
    items: dict[str, list[tuple[str, str]]] = {}
    prov = plant.provincial
    if prov is not None:
        for g in prov.gauges:
            if g.meter is not None:
                gauges.setdefault(g.meter, []).append(g.id)
        for item in prov.items:
            meter = getattr(item.source, "meter", None)
            if item.source.kind == "meter" and isinstance(meter, str):
                items.setdefault(meter, []).append((item.id, item.name))
    sources: dict[str, SourceInfo] = {}
    for mid, m in meters.items():
        info = SourceInfo("meter", m.name or mid, mid, m.name, tuple(gauges.get(mid, ())), tuple(items.get(mid, ())))
        sources[mid] = info
        for quantity in units[mid]:
            sources[f"{mid}.{quantity}"] = SourceInfo("item", f"{m.name or mid} {quantity}", mid, m.name,
                                                      info.gauges, info.data_items)
    for p in plant.products:
        sources.setdefault(p.id, SourceInfo("product", p.name or p.id))
    sources.setdefault(plant.gateway.id, SourceInfo("gateway", plant.gateway.id))
    sources.setdefault("enterprise", SourceInfo("scope", plant.enterprise.name))
    item_units: dict[str, tuple[str | None, str | None]] = {
        f"{mid}.{q}": (u, u) for mid, qs in units.items() for q, u in qs.items()}
    counter_units: dict[str, tuple[str | None, str | None]] = {}
    counters: dict[str, str] = {}
    for mid, m in meters.items():
        if m.counter is not None:
            counter_unit = units[mid].get(m.counter)
            counter_units[mid] = (counter_unit, counter_unit)
            counters[mid] = m.counter
    product_units: dict[str, tuple[str | None, str | None]] = {
        p.id: (f"kgce/{p.unit}", f"kgce/{p.unit}") for p in plant.products}
    rules: dict[str, RuleInfo] = {}
    for r in plant.alerts.rules:
        kind = r.kind
        for_secs, keep = float(r.for_secs), float(r.keep_firing_for_secs)
        if isinstance(r, ThresholdRule):
            u = units.get(r.meter, {}).get(r.quantity)
            rules[r.id] = RuleInfo(kind, "over_limit", r.quantity, u, u, for_secs, keep)
        elif kind == "offline":
            rules[r.id] = RuleInfo(kind, "data_interruption", None, "s", "s", for_secs, keep)
        elif kind in ("completeness", "budget"):
            rules[r.id] = RuleInfo(kind, category_of(kind), None, "%", "%", for_secs, keep)
        elif kind == "indicator":
            rules[r.id] = RuleInfo(kind, category_of(kind, getattr(r, "condition", None)), "unit_product_energy",
                                   None, None, for_secs, keep, product_units)
        elif kind == "range":
            rules[r.id] = RuleInfo(kind, "over_limit", None, None, None, for_secs, keep, item_units)
        elif kind == "calibration_due":
            rules[r.id] = RuleInfo(kind, "calibration_due", None, "d", "d", for_secs, keep)
        else:  # counter rules: the value is the meter's counter
            rules[r.id] = RuleInfo(kind, category_of(kind), None, None, None, for_secs, keep, counter_units,
                                   counters)
    return PayloadContext(plant.enterprise.uscc, plant.enterprise.name, plant.enterprise.tz, rules, sources)
