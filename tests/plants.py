"""Plant files the integration tests share: simulated Modbus TCP power meters (an energy counter and active
power each, as the simulators serve them), optionally a clinker scale, on one bus polled by one group."""

from __future__ import annotations

from collections.abc import Sequence

USCC = "91530102MA6K7LQ8RH"

#: (meter id, Modbus unit id, process)
Meter = tuple[str, int, str]

_MAPS = """\
register_maps:
  power:
    registers:
      - {quantity: energy_active_import, address: 0, type: uint32, scale: 0.1, unit: kWh, kind: counter}
      - {quantity: power_active, address: 2, type: float32, unit: kW}
  scale:
    registers:
      - {quantity: mass_total, address: 0, type: uint32, scale: 0.001, unit: t, kind: counter}
      - {quantity: feed_rate, address: 2, type: float32, unit: t/h}
"""


def modbus_plant(
    *,
    name: str,
    gateway: str,
    modbus_port: int,
    mqtt_url: str,
    meters: Sequence[Meter],
    poll_s: float,
    uscc: str = USCC,
    timeout_ms: int = 300,
    max_rate_per_hour: float | None = 10_000,
    keepalive_secs: int | None = None,
    clinker_scale: Meter | None = None,
    tail: str = "",
) -> str:
    """The plant file's text: one ``modbus_tcp`` bus on 127.0.0.1, a ``power`` meter per entry of ``meters``
    (electricity, level 2, counting ``energy_active_import``), an optional clinker scale, the gateway polling group
    ``fast`` every ``poll_s`` seconds, the uplink at ``mqtt_url``; ``tail`` (YAML) is appended as it is."""
    rate = "" if max_rate_per_hour is None else f" max_rate_per_hour: {max_rate_per_hour:g},"
    processes = sorted({p for _, _, p in meters} | ({clinker_scale[2]} if clinker_scale else set()))
    lines = [
        "version: 1",
        f"enterprise: {{uscc: {uscc}, name: {name}, industry_code: C3011}}",
        "processes: [" + ", ".join(f"{{id: {p}}}" for p in processes) + "]",
        _MAPS.rstrip("\n"),
        "buses:",
        f"  - {{type: modbus_tcp, id: plant_tcp, host: 127.0.0.1, port: {modbus_port}, timeout_ms: {timeout_ms},"
        " retries: 0}",
        "meters:",
    ]
    for meter_id, unit_id, process in meters:
        lines.append(
            f"  - {{id: {meter_id}, carrier: electricity, level: 2, process: {process}, counter: energy_active_import,"
            f"{rate} source: {{type: modbus, bus: plant_tcp, unit_id: {unit_id}, model: power, poll_group: fast}}}}"
        )
    if clinker_scale is not None:
        meter_id, unit_id, process = clinker_scale
        lines.append(
            f"  - {{id: {meter_id}, level: 2, process: {process}, counter: mass_total, max_rate_per_hour: 400,"
            f" source: {{type: modbus, bus: plant_tcp, unit_id: {unit_id}, model: scale, poll_group: fast}}}}"
        )
    lines.append(f"gateway: {{id: {gateway}, poll_groups: [{{id: fast, interval_secs: {poll_s:g}}}]}}")
    keepalive = "" if keepalive_secs is None else f", keepalive_secs: {keepalive_secs}"
    lines.append(f'uplink: {{url: "{mqtt_url}"{keepalive}}}')
    return "\n".join(lines) + "\n" + tail
