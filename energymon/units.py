"""Physical units the plant file may use, with their dimension and factor to the dimension's base unit."""

from __future__ import annotations

__all__ = ["UNITS", "convert", "dimension", "is_known"]

#: unit -> (dimension, factor to the base unit of that dimension)
UNITS: dict[str, tuple[str, float]] = {
    # electrical energy, base kWh
    "Wh": ("energy", 0.001),
    "kWh": ("energy", 1.0),
    "MWh": ("energy", 1000.0),
    "kvarh": ("reactive_energy", 1.0),
    "Mvarh": ("reactive_energy", 1000.0),
    # power, base kW
    "W": ("power", 0.001),
    "kW": ("power", 1.0),
    "MW": ("power", 1000.0),
    "kvar": ("reactive_power", 1.0),
    "kVA": ("apparent_power", 1.0),
    "V": ("voltage", 1.0),
    "kV": ("voltage", 1000.0),
    "A": ("current", 1.0),
    "Hz": ("frequency", 1.0),
    "pf": ("power_factor", 1.0),
    # volume, base m3 (normal cubic metres are a volume at reference conditions)
    "L": ("volume", 0.001),
    "m3": ("volume", 1.0),
    "Nm3": ("volume", 1.0),
    "m3/h": ("volume_rate", 1.0),
    "Nm3/h": ("volume_rate", 1.0),
    # mass, base t
    "kg": ("mass", 0.001),
    "t": ("mass", 1.0),
    "kg/h": ("mass_rate", 0.001),
    "t/h": ("mass_rate", 1.0),
    # area and length of output (ceramic tiles in m2, fabric in m), base m2 / m
    "m2": ("area", 1.0),
    "m2/h": ("area_rate", 1.0),
    "m": ("length", 1.0),
    "m/h": ("length_rate", 1.0),
    # heat, base GJ
    "kJ": ("heat", 1e-6),
    "MJ": ("heat", 0.001),
    "GJ": ("heat", 1.0),
    "GJ/h": ("heat_rate", 1.0),
    # process values
    "degC": ("temperature", 1.0),
    "kPa": ("pressure", 0.001),
    "MPa": ("pressure", 1.0),
    "%": ("ratio", 0.01),
    "1": ("count", 1.0),
}


def is_known(unit: str) -> bool:
    """True if ``unit`` is one of :data:`UNITS`."""
    return unit in UNITS


def dimension(unit: str) -> str:
    """Dimension of a known unit (``kWh`` → ``energy``)."""
    return UNITS[unit][0]


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """Convert between two units of the same dimension.

    Raises:
        ValueError: the units are unknown or of different dimensions.
    """
    if from_unit == to_unit:
        return value
    try:
        dim_a, fa = UNITS[from_unit]
        dim_b, fb = UNITS[to_unit]
    except KeyError as exc:
        raise ValueError(f"unknown unit {exc.args[0]!r}") from None
    if dim_a != dim_b:
        raise ValueError(f"cannot convert {from_unit} ({dim_a}) to {to_unit} ({dim_b})")
    return value * fa / fb
