"""Data items and configuration records from the plant file, with codes taken from the downloaded dictionaries.

A dataCode part is written in the plant file as a code or as a name of the province's dictionary; it is resolved
against the dictionaries the platform served (never against a list in the program), so a dictionary change on the
platform changes the dataCodes and the configuration is uploaded again.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from energymon.config import PlantConfig
from energymon.errors import ConfigError, ConfigIssue
from energymon.gateway.provincial.profile import CONFIGURATION_KINDS, ProvinceProfile
from energymon.gateway.provincial.protocol import STAT_DAY, STAT_REALTIME, build_data_code
from energymon.provincial_config import (
    CarrierItemSource,
    DataItem,
    EnterpriseItemSource,
    MeterItemSource,
    ProductItemSource,
    ProvincialConfig,
)

__all__ = [
    "Dictionaries",
    "ResolvedItem",
    "band",
    "check_references",
    "configuration_records",
    "fingerprint",
    "intensive",
    "item_meters",
    "registration_fields",
    "resolve_items",
]

#: role → list of {code, name}
Dictionaries = dict[str, list[dict[str, str]]]

_SLOTS_DAY = 96


@dataclass(frozen=True, slots=True)
class ResolvedItem:
    """A data item with its dataCode and the resolved parts."""

    item: DataItem
    data_code: str
    parts: dict[str, str]

    @property
    def id(self) -> str:
        """The item id."""
        return self.item.id


def _resolve(value: str, role: str, dictionaries: Dictionaries, where: str, length: int | None) -> str:
    entries = dictionaries.get(role)
    if not entries:
        raise ConfigError("provincial", [ConfigIssue(where, f"the {role} dictionary has not been downloaded")])
    codes = {e["code"] for e in entries}
    if value in codes:
        code = value
    else:
        named = [e["code"] for e in entries if e["name"] == value]
        if len(named) != 1:
            hint = "not found" if not named else f"ambiguous ({', '.join(named)})"
            raise ConfigError("provincial", [ConfigIssue(
                where, f"{value!r} is neither a code nor a name of the {role} dictionary: {hint}")])
        code = named[0]
    if length is not None and len(code) != length:
        raise ConfigError("provincial", [ConfigIssue(where, f"{role} code {code!r} is not {length} characters")])
    return code


def resolve_items(cfg: ProvincialConfig, profile: ProvinceProfile, dictionaries: Dictionaries) -> list[ResolvedItem]:
    """Build each item's dataCode from the dictionaries.

    Raises:
        ConfigError: a part is not in its dictionary, or two items share a dataCode.
    """
    out: list[ResolvedItem] = []
    issues: list[ConfigIssue] = []
    for n, item in enumerate(cfg.items):
        where = f"provincial.items[{n}].code"
        try:
            parts = {
                "process": _resolve(item.code.process, "process", dictionaries, f"{where}.process",
                                    profile.dictionary("process").code_length),
                "process_unit": item.code.process_unit,
                "equipment": _resolve(item.code.equipment, "equipment", dictionaries, f"{where}.equipment",
                                      profile.dictionary("equipment").code_length),
                "equipment_unit": item.code.equipment_unit,
                "energy_class": _resolve(item.code.energy_class, "energy_class", dictionaries,
                                         f"{where}.energy_class", profile.dictionary("energy_class").code_length),
                "energy_type": _resolve(item.code.energy_type, "energy_type", dictionaries, f"{where}.energy_type",
                                        profile.dictionary("energy_type").code_length),
                "usage": _resolve(item.code.usage, "data_usage", dictionaries, f"{where}.usage",
                                  profile.dictionary("data_usage").code_length),
            }
        except ConfigError as exc:
            issues += exc.issues
            continue
        out.append(ResolvedItem(item, build_data_code(parts, profile), parts))
    seen: dict[str, str] = {}
    for r in out:
        if r.data_code in seen:
            issues.append(ConfigIssue(f"provincial.items[{r.id}]",
                                      f"dataCode {r.data_code} is also the dataCode of item {seen[r.data_code]}"))
        seen[r.data_code] = r.id
    if issues:
        raise ConfigError("provincial", issues)
    return out


def check_references(plant: PlantConfig, cfg: ProvincialConfig) -> None:
    """Items, processes and gauges must name meters, carriers, products and processes of the plant.

    Raises:
        ConfigError: listing every dangling reference.
    """
    meters = {m.id: m for m in plant.meters}
    products = {p.id for p in plant.products}
    processes = {p.id for p in plant.processes}
    carriers = {m.carrier for m in plant.meters if m.carrier and m.counter}
    issues: list[ConfigIssue] = []
    for n, item in enumerate(cfg.items):
        src = item.source
        where = f"provincial.items[{n}].source"
        if isinstance(src, MeterItemSource):
            if src.meter not in meters:
                issues.append(ConfigIssue(where + ".meter", f"unknown meter {src.meter!r}"))
            elif meters[src.meter].counter is None:
                issues.append(ConfigIssue(where + ".meter", f"meter {src.meter!r} has no counter"))
        elif isinstance(src, ProductItemSource) and src.product not in products:
            issues.append(ConfigIssue(where + ".product", f"unknown product {src.product!r}"))
        elif isinstance(src, CarrierItemSource) and src.carrier not in carriers:
            issues.append(ConfigIssue(where + ".carrier", f"no metered carrier {src.carrier!r} in the plant"))
    for n, proc in enumerate(cfg.processes):
        if proc.process != "plant" and proc.process not in processes:
            issues.append(ConfigIssue(f"provincial.processes[{n}].process", f"unknown process {proc.process!r}"))
    for n, gauge in enumerate(cfg.gauges):
        if gauge.meter is not None and gauge.meter not in meters:
            issues.append(ConfigIssue(f"provincial.gauges[{n}].meter", f"unknown meter {gauge.meter!r}"))
    if issues:
        raise ConfigError("provincial", issues)


def intensive(item: DataItem) -> bool:
    """True for values that do not add up over time (an indicator such as 单位产品综合能耗)."""
    return isinstance(item.source, ProductItemSource) and item.source.field == "value"


def band(item: DataItem, slots: int) -> tuple[float, float]:
    """Plausibility band of a value spanning ``slots`` 15-minute slots (an indicator's band is not scaled)."""
    if intensive(item):
        return item.min_value, item.max_value
    return item.min_value * slots, item.max_value * slots


def _registered_band(item: DataItem, stat_type: int) -> tuple[float, float]:
    if stat_type == STAT_REALTIME:
        return band(item, 1)
    if stat_type == STAT_DAY:
        return band(item, _SLOTS_DAY)
    lo, _ = band(item, _SLOTS_DAY * 28)
    _, hi = band(item, _SLOTS_DAY * 31)
    return lo, hi


def registration_fields(plant: PlantConfig, cfg: ProvincialConfig, dictionaries: Dictionaries) -> dict[str, Any]:
    """The registration body (without enterpriseCode and password)."""
    reg = cfg.registration
    ent = plant.enterprise
    fields: dict[str, Any] = {
        "cmpName": ent.name,
        "address": reg.address,
        "zipCode": reg.zip_code,
        "corporationName": reg.corporation_name,
        "registerDate": reg.register_date.isoformat(),
        "regionCode": _resolve(reg.region_code, "region", dictionaries, "provincial.registration.region_code", None),
        "typeCode": _resolve(reg.type_code, "enterprise_type", dictionaries, "provincial.registration.type_code",
                             None),
        "industryCode": _resolve(ent.industry_code, "industry", dictionaries, "enterprise.industry_code", None),
        "fieldCode": reg.field_code,
        "center": 1 if reg.center else 0,
        "jgzh": 1 if reg.jgzh else 0,
        "productionLine": reg.production_line,
        "leadingProduct": reg.leading_product,
        "groupName": reg.group_name,
        "phone": reg.phone,
        "email": reg.email,
    }
    if reg.energy_consume_level is not None:
        fields["energyConsumeLevel"] = reg.energy_consume_level
    if reg.latitude is not None:
        fields["latitude"] = reg.latitude
    if reg.longitude is not None:
        fields["longitude"] = reg.longitude
    if reg.license_file is not None:
        try:
            fields["license"] = base64.b64encode(reg.license_file.read_bytes()).decode("ascii")
        except OSError as exc:
            raise ConfigError(str(reg.license_file), [ConfigIssue("provincial.registration.license_file",
                                                                  f"cannot read: {exc}")]) from None
    return fields


def configuration_records(
    plant: PlantConfig, cfg: ProvincialConfig, profile: ProvinceProfile, dictionaries: Dictionaries,
    items: list[ResolvedItem],
) -> dict[str, list[dict[str, Any]]]:
    """Configuration kind → records (each with a unique ``code``), in upload order."""
    names = {p.id: p.name for p in plant.processes}
    meters = {m.id: m for m in plant.meters}
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in CONFIGURATION_KINDS}
    if cfg.energy_office is not None:
        o = cfg.energy_office
        out["energy_office"].append({"code": "office", "name": o.name, "head": o.head, "phone": o.phone,
                                     "staff": o.staff})
    for i, c in enumerate(cfg.contacts):
        out["contacts"].append({"code": f"contact{i + 1}", "name": c.name, "role": c.role, "phone": c.phone,
                                "email": c.email})
    for i, m in enumerate(cfg.energy_managers):
        out["energy_managers"].append({"code": f"manager{i + 1}", "name": m.name, "certificate": m.certificate,
                                       "phone": m.phone})
    process_len = profile.dictionary("process").code_length
    for n, p in enumerate(cfg.processes):
        code = _resolve(p.code, "process", dictionaries, f"provincial.processes[{n}].code", process_len)
        out["processes"].append({"code": f"{code}-{p.unit_code}", "processCode": code, "processUnitCode": p.unit_code,
                                 "processName": p.name or names.get(p.process, "全厂")})
    for g in cfg.gauges:
        meter = meters.get(g.meter) if g.meter else None
        level = g.level if g.level is not None else (int(meter.level) if meter and meter.level else None)
        out["gauges"].append({"code": g.id, "gaugeName": g.name or (meter.name if meter else g.id),
                              "model": g.model, "manufacturer": g.manufacturer, "serialNumber": g.serial,
                              "accuracyClass": g.accuracy_class, "level": level,
                              "installDate": g.installed.isoformat() if g.installed else "",
                              "energyType": meter.carrier if meter and meter.carrier else ""})
        for v in g.verifications:
            out["gauge_verifications"].append({
                "code": f"{g.id}:{v.date.isoformat()}", "gaugeCode": g.id, "verifyDate": v.date.isoformat(),
                "nextVerifyDate": v.next_due.isoformat() if v.next_due else "", "verifyOrg": v.organisation,
                "certificateNo": v.certificate, "verifyResult": v.result})
        for r in g.replacements:
            at = r.at.astimezone(plant.enterprise.tz).strftime(profile.datetime_format)
            out["gauge_replacements"].append({
                "code": f"{g.id}:{r.at.isoformat()}", "gaugeCode": g.id, "replaceTime": at,
                "oldSerialNumber": r.old_serial, "newSerialNumber": r.new_serial, "reason": r.reason})
    for ri in items:
        item = ri.item
        for st in sorted(item.stat_types):
            lo, hi = _registered_band(item, st)
            out["data_items"].append({
                "code": f"{item.id}:{st}", "dataCode": ri.data_code, "dataName": item.name,
                "processCode": ri.parts["process"], "processUnitCode": ri.parts["process_unit"],
                "equipmentCode": ri.parts["equipment"], "equipmentUnitCode": ri.parts["equipment_unit"],
                "energyClassCode": ri.parts["energy_class"], "energyTypeCode": ri.parts["energy_type"],
                "dataUsageCode": ri.parts["usage"], "inputType": item.input_type, "statType": st,
                "scope": item.scope, "dataValueMin": round(lo, item.decimals), "dataValueMax": round(hi, item.decimals),
                "collectSystemName": item.collect_system_name, "gaugeCode": item.gauge or ""})
    return out


def fingerprint(record: dict[str, Any]) -> str:
    """Stable hash of a configuration record (what changed since the last upload)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def item_meters(item: DataItem, rules: Any) -> list[str]:
    """The meters an item's values are computed from (their completeness gates the item)."""
    src = item.source
    if isinstance(src, MeterItemSource):
        return [src.meter]
    if isinstance(src, EnterpriseItemSource):
        return sorted(rules.enterprise_meters)
    if isinstance(src, CarrierItemSource):
        return sorted(m for m in rules.enterprise_meters if rules.meters[m].meter.carrier == src.carrier)
    product = rules.products[src.product]
    return sorted({*rules.product_meters.get(src.product, {}), product.output.meter})

