"""Checks that span several objects of a plant file.

Field-level checks live on the models in :mod:`energymon.config`; everything here needs the whole plant:
duplicate ids, references to buses, processes, meters and quantities, overlapping registers, a bus timeout
longer than the poll interval, a carrier whose counter unit cannot be converted to standard coal.
Each check yields ``(key path, message)``; :func:`energymon.config.parse_plant` adds file and line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from datetime import date

from energymon import units
from energymon.accounting_config import check_accounting
from energymon.alerts_config import check_alerts
from energymon.config import (
    DataType,
    Dlt645SerialBus,
    Dlt645Source,
    Dlt645TcpBus,
    Meter,
    ModbusRtuBus,
    ModbusRtuTcpBus,
    ModbusSource,
    ModbusTcpBus,
    MqttBus,
    MqttJsonSource,
    PlantConfig,
    RegisterFunction,
    RegisterMap,
)
from energymon.topics import RESERVED_GATEWAY_IDS

__all__ = ["check_plant"]

Issue = tuple[str, str]


def _duplicates(kind: str, section: str, ids: Iterable[str]) -> Iterator[Issue]:
    seen: dict[str, int] = {}
    for i, ident in enumerate(ids):
        if ident in seen:
            yield f"{section}[{i}].id", f"duplicate {kind} id {ident!r} (first at {section}[{seen[ident]}])"
        else:
            seen[ident] = i


def check_plant(plant: PlantConfig, *, extra_ids: Iterable[str] = ()) -> list[Issue]:
    """Return every cross-object problem of a plant, in file order.

    Args:
        plant: the plant.
        extra_ids: more ids to suggest for a misspelt reference (those of elements left out of ``plant`` for
            their own errors).
    """
    issues: list[Issue] = []
    issues += _duplicates("process", "processes", (p.id for p in plant.processes))
    issues += _duplicates("bus", "buses", (b.id for b in plant.buses))
    issues += _duplicates("meter", "meters", (m.id for m in plant.meters))
    issues += _duplicates("product", "products", (p.id for p in plant.products))
    issues += _duplicates("poll group", "gateway.poll_groups", (g.id for g in plant.gateway.poll_groups))
    issues += _duplicates("rule", "alerts.rules", (r.id for r in plant.alerts.rules))
    issues += _duplicates("notifier", "alerts.notifiers", (n.id for n in plant.alerts.notifiers))
    if plant.gateway.id in RESERVED_GATEWAY_IDS:
        issues.append(("gateway.id", f"{plant.gateway.id!r} is reserved in the topic scheme"))
    issues += _check_processes(plant)
    issues += _check_meters(plant)
    issues += _check_products(plant)
    issues += _check_rules(plant)
    issues += check_accounting(plant)
    extra = list(extra_ids)
    return [(path, _suggest(plant, message, extra)) for path, message in issues]


_UNKNOWN = re.compile(
    r"unknown (process|bus|poll group|meter|product|notifier|rule|gateway|energy carrier|register map) '([^']*)'")


def _suggest(plant: PlantConfig, message: str, extra: list[str]) -> str:
    """Add "did you mean" to an "unknown <kind> 'id'" message when a known id is close."""
    m = _UNKNOWN.search(message)
    if m is None or "did you mean" in message:
        return message
    kind, word = m.groups()
    known: list[str]
    if kind == "register map":
        from energymon.collectors.library import library_names

        known = [*plant.register_maps, *library_names()]
    elif kind == "energy carrier":
        try:
            from energymon.refdata import load_reference_data

            known = list(load_reference_data().carriers())
        except Exception:  # reference data problems are reported elsewhere
            known = []
    else:
        known = {
            "process": [p.id for p in plant.processes], "bus": [b.id for b in plant.buses],
            "poll group": [g.id for g in plant.gateway.poll_groups], "meter": [x.id for x in plant.meters],
            "product": [x.id for x in plant.products], "notifier": [n.id for n in plant.alerts.notifiers],
            "rule": [r.id for r in plant.alerts.rules], "gateway": [plant.gateway.id],
        }[kind]
    match = difflib.get_close_matches(word, known + extra, n=1, cutoff=0.6)
    return f"{message}; did you mean {match[0]!r}?" if match else message


def _check_processes(plant: PlantConfig) -> Iterator[Issue]:
    ids = {p.id for p in plant.processes}
    parents = {p.id: p.parent for p in plant.processes}
    for i, proc in enumerate(plant.processes):
        if proc.parent is not None and proc.parent not in ids:
            yield f"processes[{i}].parent", f"unknown process {proc.parent!r}"
        seen, cur = {proc.id}, proc.parent
        while cur is not None and cur in parents:
            if cur in seen:
                yield f"processes[{i}].parent", f"process {proc.id!r} is its own ancestor"
                break
            seen.add(cur)
            cur = parents[cur]


def _check_meters(plant: PlantConfig) -> Iterator[Issue]:
    buses = {b.id: b for b in plant.buses}
    processes = {p.id for p in plant.processes}
    groups = {g.id: g for g in plant.gateway.poll_groups}
    units_on_bus: dict[tuple[str, int], int] = {}
    topics: dict[tuple[str, str], int] = {}
    addresses: dict[tuple[str, str], int] = {}
    for i, meter in enumerate(plant.meters):
        base = f"meters[{i}]"
        src = meter.source
        if meter.process is not None and meter.process not in processes:
            yield f"{base}.process", f"unknown process {meter.process!r}"
        bus = buses.get(src.bus)
        if bus is None:
            yield f"{base}.source.bus", f"unknown bus {src.bus!r}"
        if isinstance(src, ModbusSource):
            if bus is not None and not isinstance(bus, ModbusTcpBus | ModbusRtuTcpBus | ModbusRtuBus):
                yield f"{base}.source.bus", f"bus {src.bus!r} is {bus.type}, not a Modbus bus"
            key = (src.bus, src.unit_id)
            if key in units_on_bus:
                yield (
                    f"{base}.source.unit_id",
                    f"unit id {src.unit_id} on bus {src.bus!r} is already used by meters[{units_on_bus[key]}]",
                )
            else:
                units_on_bus[key] = i
            group = groups.get(src.poll_group)
            if group is None:
                yield f"{base}.source.poll_group", f"unknown poll group {src.poll_group!r}"
            elif bus is not None and not isinstance(bus, MqttBus):
                worst_ms = bus.timeout_ms * (bus.retries + 1)
                if worst_ms >= group.interval_secs * 1000:
                    yield (
                        f"{base}.source.bus",
                        f"bus {bus.id!r} timeout_ms {bus.timeout_ms} × {bus.retries + 1} tries is not shorter "
                        f"than poll group {group.id!r} interval {group.interval_secs} s",
                    )
            yield from _check_modbus_map(plant, base, src)
        elif isinstance(src, Dlt645Source):
            if bus is not None and not isinstance(bus, Dlt645SerialBus | Dlt645TcpBus):
                yield f"{base}.source.bus", f"bus {src.bus!r} is {bus.type}, not a DL/T 645 bus"
            key3 = (src.bus, src.address)
            if key3 in addresses:
                yield (
                    f"{base}.source.address",
                    f"address {src.address} on bus {src.bus!r} is already used by meters[{addresses[key3]}]",
                )
            else:
                addresses[key3] = i
            if src.poll_group not in groups:
                yield f"{base}.source.poll_group", f"unknown poll group {src.poll_group!r}"
            from energymon.collectors.dlt645 import check_source

            for path, msg in check_source(src):
                yield f"{base}.source.{path}", msg
            seen3: dict[str, int] = {}
            for j, item in enumerate(src.items):
                if item.quantity in seen3:
                    yield f"{base}.source.items[{j}].quantity", f"duplicate quantity {item.quantity!r}"
                seen3[item.quantity] = j
        elif isinstance(src, MqttJsonSource):
            if bus is not None and not isinstance(bus, MqttBus):
                yield f"{base}.source.bus", f"bus {src.bus!r} is {bus.type}, not an MQTT bus"
            key2 = (src.bus, src.topic)
            if key2 in topics:
                yield f"{base}.source.topic", f"topic {src.topic!r} is already read by meters[{topics[key2]}]"
            else:
                topics[key2] = i
            seen: dict[str, int] = {}
            for j, fld in enumerate(src.fields):
                if fld.quantity in seen:
                    yield f"{base}.source.fields[{j}].quantity", f"duplicate quantity {fld.quantity!r}"
                seen[fld.quantity] = j
        yield from _check_counter(plant, base, meter)


def _resolve(plant: PlantConfig, base: str, src: ModbusSource) -> tuple[RegisterMap | None, str | None]:
    try:
        return plant.register_map(src), None
    except (KeyError, ImportError, ValueError) as exc:
        return None, f"unknown register map {src.model!r} ({exc})" if src.model else str(exc)


def _check_modbus_map(plant: PlantConfig, base: str, src: ModbusSource) -> Iterator[Issue]:
    regmap, err = _resolve(plant, base, src)
    if regmap is None:
        yield f"{base}.source.model", err or "no register map"
        return
    where = f"{base}.source.registers" if src.registers is not None else f"register map {src.model!r} registers"
    seen_q: dict[str, int] = {}
    used: dict[tuple[RegisterFunction, int, int | None], int] = {}
    first = 1 if regmap.addressing == "one_based" else 0
    for j, reg in enumerate(regmap.registers):
        if reg.quantity in seen_q:
            yield f"{where}[{j}].quantity", f"duplicate quantity {reg.quantity!r} (first at [{seen_q[reg.quantity]}])"
        seen_q[reg.quantity] = j
        if reg.address < first:
            yield f"{where}[{j}].address", f"address {reg.address} is below {first} in one_based addressing"
        for k in range(reg.width):
            slot = (reg.function, reg.address + k, reg.bit if reg.type is DataType.BIT else None)
            if slot in used and used[slot] != j:
                yield (
                    f"{where}[{j}].address",
                    f"{reg.function.value} register {reg.address + k} overlaps {where}[{used[slot]}]",
                )
                break
            used[slot] = j


def _check_counter(plant: PlantConfig, base: str, meter: Meter) -> Iterator[Issue]:
    try:
        quantities = plant.quantities(meter)
    except (KeyError, ImportError, ValueError):
        return  # reported by the map check
    if meter.counter is None:
        if meter.carrier is not None:
            yield f"{base}.counter", f"meter with carrier {meter.carrier!r} needs counter: the cumulative quantity"
        return
    if meter.counter not in quantities:
        yield f"{base}.counter", f"meter has no quantity {meter.counter!r} (has: {', '.join(sorted(quantities))})"
        return
    unit, kind, _ = quantities[meter.counter]
    if kind != "counter":
        yield f"{base}.counter", f"quantity {meter.counter!r} is a {kind}, not a cumulative counter"
    if meter.carrier is not None:
        yield from _check_carrier_unit(plant, base, meter.carrier, unit)


def _check_carrier_unit(plant: PlantConfig, base: str, carrier: str, unit: str) -> Iterator[Issue]:
    """The counter's unit must convert to the unit of the carrier's coefficient: the plant's measured one
    (``accounting.coefficient_overrides``) if given, else the reference data's (which for some carriers, e.g.
    coke-oven gas, is only a range and then needs the plant's measured value)."""
    from energymon.refdata import ReferenceDataError, load_reference_data

    override = next((o for o in plant.accounting.coefficient_overrides if o.carrier == carrier), None)
    coef_unit: str
    if override is not None:
        coef_unit = override.unit
    else:
        try:
            coef_unit = load_reference_data().coefficient(carrier, on=date.today()).unit  # noqa: DTZ011 - in force today
        except ReferenceDataError as exc:
            yield f"{base}.carrier", str(exc)
            return
    if units.is_known(coef_unit) and units.dimension(coef_unit) != units.dimension(unit):
        yield (
            f"{base}.counter",
            f"wrong unit {unit!r} for carrier {carrier!r}: its coefficient is per {coef_unit} "
            f"({units.dimension(coef_unit)}), the counter measures {units.dimension(unit)}",
        )


def _check_products(plant: PlantConfig) -> Iterator[Issue]:
    meters = {m.id: m for m in plant.meters}
    processes = {p.id for p in plant.processes}
    for i, prod in enumerate(plant.products):
        base = f"products[{i}]"
        out = meters.get(prod.output.meter)
        if out is None:
            yield f"{base}.output.meter", f"unknown meter {prod.output.meter!r}"
        else:
            try:
                q = plant.quantities(out)
            except (KeyError, ImportError, ValueError):
                q = {}
            if q and prod.output.quantity not in q:
                yield f"{base}.output.quantity", f"meter {out.id!r} has no quantity {prod.output.quantity!r}"
            elif q and units.dimension(q[prod.output.quantity][0]) != units.dimension(prod.unit):
                yield (
                    f"{base}.output.quantity",
                    f"wrong unit: output counted in {q[prod.output.quantity][0]} but product unit is {prod.unit}",
                )
        for j, proc in enumerate(prod.boundary.processes):
            if proc not in processes:
                yield f"{base}.boundary.processes[{j}]", f"unknown process {proc!r}"
        for j, mid in enumerate(prod.boundary.meters):
            if mid not in meters:
                yield f"{base}.boundary.meters[{j}]", f"unknown meter {mid!r}"
            elif meters[mid].carrier is None:
                yield f"{base}.boundary.meters[{j}]", f"meter {mid!r} has no energy carrier"
        try:
            from energymon.refdata import ReferenceDataError, load_reference_data

            load_reference_data().indicator(prod.indicator)
        except ImportError:  # pragma: no cover
            pass
        except ReferenceDataError as exc:
            yield f"{base}.indicator", str(exc)


def _check_rules(plant: PlantConfig) -> Iterator[Issue]:
    yield from check_alerts(plant)
