"""Checks that span several objects of a plant file.

Field-level checks live on the models in :mod:`energymon.config`; everything here needs the whole plant:
duplicate ids, references to buses, processes, meters and quantities, overlapping registers (within a meter,
and between meters sharing a unit id), a bus timeout longer than the poll interval, a bus whose meters with one
dropping out cannot be read within the interval, a carrier whose counter unit cannot be converted to standard coal.
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
from energymon.building_config import check_building
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

__all__ = ["check_plant", "plant_warnings"]

PolledBus = ModbusTcpBus | ModbusRtuTcpBus | ModbusRtuBus | Dlt645SerialBus | Dlt645TcpBus

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
    limit = plant.processor.limits.max_batch_points
    if plant.gateway.batch_max_points > limit:
        issues.append(("gateway.batch_max_points", f"{plant.gateway.batch_max_points} is more than the processor "
                       f"takes in one batch (processor.limits.max_batch_points: {limit})"))
    issues += _check_processes(plant)
    issues += _check_meters(plant)
    issues += _check_bus_timing(plant)
    issues += _check_products(plant)
    issues += _check_rules(plant)
    issues += check_accounting(plant)
    issues += check_building(plant)
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


def plant_warnings(plant: PlantConfig) -> list[Issue]:
    """Things a valid plant file should still change, in file order (``energymon validate`` prints them).

    * an accounted counter with a rollover point (``counter_max``, or an unsigned Modbus register type) and no
      ``max_rate_per_hour``: its wraps, spikes and jumps are judged by a bound learned from the counter itself,
      which cannot refuse a jump up that persists (docs/accounting.md, counter rules).
    """
    from energymon.counters import counter_max_of

    out: list[Issue] = []
    for i, meter in enumerate(plant.meters):
        if meter.counter is None or meter.max_rate_per_hour is not None:
            continue
        try:
            cmax = counter_max_of(plant, meter)
        except (KeyError, ImportError, ValueError):
            continue
        if cmax is not None:
            out.append((f"meters[{i}].max_rate_per_hour",
                        f"meter {meter.id!r}: counter {meter.counter!r} rolls over at {cmax:.12g} and has no "
                        "max_rate_per_hour; set the largest plausible increase per hour so a bad reading near "
                        "the rollover point or a lasting jump is never booked as consumption"))
    return out


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
    units_on_bus: dict[tuple[str, int], dict[tuple[RegisterFunction, int, int | None], int]] = {}
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
            yield from _check_shared_unit(plant, base, i, src, units_on_bus)
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


def _check_shared_unit(
    plant: PlantConfig,
    base: str,
    index: int,
    src: ModbusSource,
    units_on_bus: dict[tuple[str, int], dict[tuple[RegisterFunction, int, int | None], int]],
) -> Iterator[Issue]:
    """Several meters may share a unit id (one multi-circuit device with many feeders) where their registers do
    not overlap; compared by protocol address, so maps with different addressing compare right."""
    regmap, _ = _resolve(plant, base, src)
    if regmap is None:
        return  # reported by the map check
    used = units_on_bus.setdefault((src.bus, src.unit_id), {})
    shift = 1 if regmap.addressing == "one_based" else 0
    mine: dict[tuple[RegisterFunction, int, int | None], int] = {}
    clash: tuple[int, RegisterFunction, int] | None = None
    for reg in regmap.registers:
        for k in range(reg.width):
            slot = (reg.function, reg.address - shift + k, reg.bit if reg.type is DataType.BIT else None)
            if clash is None and slot in used:
                clash = (used[slot], reg.function, reg.address + k)
            mine[slot] = index
    if clash is not None:
        other, function, address = clash
        yield (
            f"{base}.source.unit_id",
            f"unit id {src.unit_id} on bus {src.bus!r} is already used by meters[{other}] "
            f"({plant.meters[other].id}) for {function.value} register {address}; meters may share a unit id "
            "only where their registers do not overlap",
        )
        return
    used.update(mine)


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


#: assumed time of one Modbus TCP request and its reply on a LAN, device included (ms)
_TCP_REQUEST_MS = 20.0
#: assumed reply latency of a device on a serial line, after the request's last byte (ms)
_SERIAL_TURNAROUND_MS = 10.0
#: line speed assumed behind a serial device server (the TCP side does not say)
_DEVICE_SERVER_BAUD = 9600


def _char_ms(baudrate: int, bytesize: int, parity: str, stopbits: int) -> float:
    return (1 + bytesize + (0 if parity == "N" else 1) + stopbits) * 1000 / baudrate


def _bus_read_ms(plant: PlantConfig, bus: PolledBus, meters: list[Meter]) -> tuple[float, int]:
    """Estimated ms to read ``meters`` when they all answer, and the number of requests."""
    total = 0.0
    requests = 0
    if isinstance(bus, Dlt645SerialBus | Dlt645TcpBus):
        char = (_char_ms(bus.baudrate, bus.bytesize, bus.parity, bus.stopbits) if isinstance(bus, Dlt645SerialBus)
                else _char_ms(2400, 8, "E", 1))
        for m in meters:
            if isinstance(m.source, Dlt645Source):
                n = len(m.source.items)
                requests += n
                total += n * ((20 + 24) * char + _SERIAL_TURNAROUND_MS)  # FE preamble, frame, reply with data
        return total, requests
    from energymon.collectors.planner import plan

    serial = isinstance(bus, ModbusRtuBus | ModbusRtuTcpBus)
    char = (_char_ms(bus.baudrate, bus.bytesize, bus.parity, bus.stopbits) if isinstance(bus, ModbusRtuBus)
            else _char_ms(_DEVICE_SERVER_BAUD, 8, "N", 1))
    for m in meters:
        src = m.source
        if not isinstance(src, ModbusSource):
            continue
        try:
            regmap = plant.register_map(src)
            hole = src.max_hole_registers if src.max_hole_registers is not None else bus.max_hole_registers
            reads = plan(regmap.registers, regmap.addressing, max_hole=hole)
        except (KeyError, ImportError, ValueError):
            continue  # reported by the map check
        for req in reads:
            requests += 1
            if not serial:
                total += _TCP_REQUEST_MS
                continue
            reply = 5 + (req.count * 2 if req.function_code in (3, 4) else (req.count + 7) // 8)
            total += (8 + reply + 7) * char + _SERIAL_TURNAROUND_MS  # request, reply, two 3.5-character gaps
    return total, requests


def _check_bus_timing(plant: PlantConfig) -> Iterator[Issue]:
    """Per bus and poll group: the meters that answer, plus one that stops answering (its timeouts and retries,
    paid in the tick it drops), must be read within the interval; otherwise that bus skips ticks."""
    groups = {g.id: g for g in plant.gateway.poll_groups}
    for i, bus in enumerate(plant.buses):
        if isinstance(bus, MqttBus):
            continue
        by_group: dict[str, list[Meter]] = {}
        for m in plant.meters:
            src = m.source
            if src.bus == bus.id and isinstance(src, ModbusSource | Dlt645Source) and src.poll_group in groups:
                by_group.setdefault(src.poll_group, []).append(m)
        drop_ms = bus.timeout_ms * (bus.retries + 1)
        for gid, meters in by_group.items():
            interval_ms = groups[gid].interval_secs * 1000
            if drop_ms >= interval_ms and not isinstance(bus, Dlt645SerialBus | Dlt645TcpBus):
                continue  # reported per Modbus meter
            read_ms, requests = _bus_read_ms(plant, bus, meters)
            if read_ms + drop_ms >= interval_ms:
                yield (
                    f"buses[{i}]",
                    f"bus {bus.id!r}: its {len(meters)} meter(s) of poll group {gid!r} take about "
                    f"{read_ms:.0f} ms to read ({requests} request(s)), and one that stops answering adds "
                    f"timeout_ms {bus.timeout_ms} × {bus.retries + 1} tries; {read_ms + drop_ms:.0f} ms is not "
                    f"shorter than the interval {groups[gid].interval_secs} s: lengthen the interval, shorten "
                    "the timeout, or split the meters over poll groups or buses",
                )


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
