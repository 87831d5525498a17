"""Render the plant-file reference (Markdown) from the config models, so the docs cannot drift from the code.

``python -m energymon.config_reference`` prints it; the README embeds it between markers and a test checks
that the embedded copy is current.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from energymon import accounting_config, alerts_config, building_config, config, provincial_config

__all__ = ["render"]

_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("plant file (top level)", config.PlantConfig),
    ("enterprise", config.Enterprise),
    ("processes[]", config.Process),
    ("register_maps.NAME", config.RegisterMap),
    ("registers[]", config.Register),
    ("buses[] type: modbus_tcp", config.ModbusTcpBus),
    ("buses[] type: modbus_rtu_tcp", config.ModbusRtuTcpBus),
    ("buses[] type: modbus_rtu", config.ModbusRtuBus),
    ("buses[] type: mqtt", config.MqttBus),
    ("buses[] type: dlt645_serial", config.Dlt645SerialBus),
    ("buses[] type: dlt645_tcp", config.Dlt645TcpBus),
    ("buses[].polling", config.BusPolling),
    ("tls", config.TlsConfig),
    ("meters[]", config.Meter),
    ("meters[].source type: modbus", config.ModbusSource),
    ("meters[].source type: mqtt_json", config.MqttJsonSource),
    ("meters[].source.fields[]", config.MqttJsonField),
    ("meters[].source type: dlt645", config.Dlt645Source),
    ("meters[].source.items[]", config.Dlt645Item),
    ("products[]", config.Product),
    ("products[].output", config.OutputRef),
    ("products[].boundary", config.Boundary),
    ("gateway", config.GatewayConfig),
    ("gateway.poll_groups[]", config.PollGroup),
    ("uplink", config.UplinkConfig),
    ("processor", config.ProcessorConfig),
    ("processor.store type: influxdb", config.InfluxStoreConfig),
    ("processor.store type: sqlite", config.SqliteStoreConfig),
    *alerts_config.REFERENCE_SECTIONS,
    *accounting_config.REFERENCE_SECTIONS,
    *building_config.REFERENCE_SECTIONS,
    *provincial_config.REFERENCE_SECTIONS,
]


def _type(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is typing.Annotated:
        return _type(get_args(tp)[0])
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) > 1 and all(isinstance(a, type) and issubclass(a, BaseModel) for a in args):
            return "mapping: one of the variants below"
        text = " \\| ".join(_type(a) for a in args)
        return text + (" \\| null" if len(args) < len(get_args(tp)) else "")
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type(get_args(tp)[1])}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " \\| ".join(f"`{m.value}`" for m in tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping (see below)"
    return getattr(tp, "__name__", str(tp))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    factory = field.default_factory
    if factory is not None:
        if factory in (list, dict):
            return "`[]`" if factory is list else "`{}`"
        return "defaults (see below)"
    value = field.default
    if value is PydanticUndefined or value is None:
        return "null" if value is None else "—"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value}`" if value != "" else '`""`'


def render() -> str:
    """The reference as Markdown."""
    out: list[str] = []
    for title, model in _SECTIONS:
        out.append(f"#### `{title}`")
        out.append("")
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        if doc:
            out += [doc, ""]
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for name, field in model.model_fields.items():
            desc = (field.description or ("selects this variant" if name in ("type", "kind") else "")).replace(
                "|", "\\|"
            )
            out.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {desc} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
