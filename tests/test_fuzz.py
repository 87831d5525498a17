"""Property-based fuzzing of the three entrances that take bytes from outside: the wire decoder
(``decode_wire``), the plant loader (``parse_plant``) and the readings CSV (``read_readings_csv``).

For every input the result is a value or a clear error (an :class:`~energymon.errors.EnergymonError`), never
another exception, and the memory one call allocates stays under a bound (``tracemalloc`` peak). The runs are
deterministic (``derandomize=True``, no example database) and bounded (``max_examples``, no deadline), so they
depend neither on luck nor on the machine's speed.
"""

from __future__ import annotations

import copy
import io
import json
import tempfile
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from energymon.config import PlantConfig, load_plant, parse_plant
from energymon.demo import example_plant_path
from energymon.errors import ConfigError, EnergymonError, InputError, SchemaError
from energymon.processors.readings_csv import ReadingsFile, read_readings_csv
from energymon.schema import decode_wire

T = TypeVar("T")

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=150, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: Bytes one call may allocate at its peak, well above what inputs of a few KiB need.
MEMORY_LIMIT = 64 * 1024 * 1024

EXAMPLE_TEXT = example_plant_path().read_text(encoding="utf-8")
EXAMPLE_DATA: dict[str, Any] = yaml.safe_load(EXAMPLE_TEXT)
PLANT: PlantConfig = load_plant(example_plant_path())
METERS = [m.id for m in PLANT.meters if m.counter]


def bounded(call: Callable[[], T]) -> T | EnergymonError:
    """Run ``call``; its result or the EnergymonError it raised. Anything else fails the test, as does a peak
    allocation above :data:`MEMORY_LIMIT` (traced only during the call, so generating inputs stays fast)."""
    tracemalloc.start()
    try:
        result: T | EnergymonError = call()
    except EnergymonError as exc:
        assert str(exc), "an error without a message"
        result = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"{peak / 2**20:.1f} MiB allocated"
    return result


# --------------------------------------------------------------------------------------------- wire decoder

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
ms = st.one_of(st.integers(946_684_800_000, 4_102_444_800_000), st.integers(), json_values)
points = st.fixed_dictionaries(
    {"meter": st.sampled_from(["m1", "kiln-2", "", "Ü", "a" * 70]) | json_values,
     "quantity": st.sampled_from(["energy_active_import", "power_active", "X"]) | json_values,
     "value": st.none() | st.floats() | st.integers() | json_values,
     "unit": st.sampled_from(["kWh", "kW", "", "x" * 20]) | json_values,
     "ts_ms": ms},
    optional={"quality": st.sampled_from(["good", "uncertain", "bad", "worse"]) | json_values,
              "interval": st.fixed_dictionaries({"start_ms": ms, "amount": st.floats() | json_values},
                                                optional={"flag": st.text(max_size=8) | json_values}),
              "extra": json_values},
)
batches = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 2, "1"]), "enterprise": st.sampled_from(["91530102MA6K7LQ8RH", ""]) | json_values,
     "gateway": st.sampled_from(["gw1", "gw other"]) | json_values, "seq": st.integers() | json_values,
     "sent_ms": ms, "points": st.lists(points, max_size=5) | json_values},
    optional={"extra": json_values},
)


def _wire(batch: dict[str, Any], compress: bool, cut: int | None, flip: int | None) -> bytes:
    raw = json.dumps(batch).encode()
    payload = zlib.compress(raw) if compress else raw
    if cut is not None:
        payload = payload[: cut % (len(payload) + 1)]
    if flip is not None and payload:
        i = flip % len(payload)
        payload = payload[:i] + bytes([payload[i] ^ 0xFF]) + payload[i + 1 :]
    return payload


wire_payloads = st.one_of(
    st.binary(max_size=2048),
    st.builds(_wire, batches, st.booleans(), st.none() | st.integers(0, 4096), st.none() | st.integers(0, 4096)),
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(1, 200_000)),
    st.builds(lambda b: zlib.compress(b), st.binary(max_size=1024)),
)


@FUZZ
@given(wire_payloads)
def test_wire_decoder_gives_a_batch_or_a_schema_error(payload: bytes) -> None:
    result = bounded(lambda: decode_wire(payload))
    assert isinstance(result, SchemaError | dict), type(result)
    if isinstance(result, dict):
        assert result["v"] == 1 and isinstance(result["points"], list)


# --------------------------------------------------------------------------------------------- plant loader


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


EXAMPLE_PATHS = _paths(EXAMPLE_DATA)[1:]


@st.composite
def mutated_plants(draw: st.DrawFn) -> str:
    """The example plant with a few nodes replaced, removed or added, dumped as YAML."""
    data = copy.deepcopy(EXAMPLE_DATA)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(EXAMPLE_PATHS))
        parent: Any = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            key = path[-1]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[key] = draw(json_values)
            elif action == "delete":
                del parent[key]
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=12))] = draw(json_values)
            elif isinstance(parent, list):
                parent.append(draw(json_values))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed the path
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    """Broken-up pieces of the example plant file, or YAML-ish noise."""
    lines = EXAMPLE_TEXT.splitlines()
    kind = draw(st.sampled_from(["slice", "noise", "indent"]))
    if kind == "slice":
        a = draw(st.integers(0, len(lines)))
        b = draw(st.integers(a, len(lines)))
        return "\n".join(lines[:a] + lines[b:])
    if kind == "indent":
        i = draw(st.integers(0, len(lines) - 1))
        return "\n".join([*lines[:i], " " * draw(st.integers(0, 7)) + lines[i].lstrip(), *lines[i + 1:]])
    return draw(st.text(st.sampled_from(list("ab: -[]{}&*!|>'\"#\n\t0.,%@`?\x00\x85\u2028")), max_size=300))


@FUZZ
@given(st.one_of(mutated_plants(), yaml_texts(), st.text(max_size=500)))
def test_plant_loader_gives_a_plant_or_a_config_error(text: str) -> None:
    result = bounded(lambda: parse_plant(text, "fuzz.yaml"))
    assert isinstance(result, PlantConfig | ConfigError), type(result)
    if isinstance(result, ConfigError):
        assert result.issues and all(str(i.render("fuzz.yaml")).startswith("fuzz.yaml") for i in result.issues)
        lines = [i.line for i in result.issues if i.line is not None]
        assert lines == sorted(lines)


# --------------------------------------------------------------------------------------------- readings CSV

ts_cells = st.one_of(
    st.sampled_from(["2026-03-05T00:00:00+08:00", "2026-03-05 01:00:00", "2026-03-05T02:00:00Z", "2026-02-30",
                     "1772640000000", "1772640000", "3000-01-01T00:00:00Z", "not-a-date", "", "-1", "１２３"]),
    st.integers().map(str), st.text(max_size=30),
)
value_cells = st.one_of(st.floats().map(repr), st.integers().map(str), st.sampled_from(["", "nan", "inf", "1e400"]),
                        st.text(max_size=12))
meter_cells = st.sampled_from([*METERS, "ghost", "", "kiln drive"]) | st.text(max_size=12)


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    header = draw(st.sampled_from(["ts,meter_id,value", "ts,meter,value,quality", "ts,meter_id,value,quantity",
                                   "value,ts,meter_id", "ts,meter_id", "", "ts,ts,value"]))
    width = max(1, header.count(",") + 1)
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        cells = [draw(ts_cells), draw(meter_cells), draw(value_cells)]
        cells += [draw(st.sampled_from(["good", "bad", "energy_active_import", ""])) for _ in range(width - 3)]
        if draw(st.booleans()):
            cells = cells[: draw(st.integers(0, len(cells) + 1))]
        rows.append(",".join(f'"{c}"' if draw(st.booleans()) else c for c in cells))
    return "\n".join([header, *rows]) + draw(st.sampled_from(["", "\n", "\r\n"]))


@FUZZ
@given(st.one_of(csv_texts(), st.text(max_size=400), st.binary(max_size=400)))
def test_readings_csv_gives_readings_or_an_input_error(content: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "readings.csv"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="")
        result = bounded(lambda: read_readings_csv(path, PLANT))
    assert isinstance(result, ReadingsFile | InputError), type(result)
    if isinstance(result, InputError):
        assert str(result).startswith(str(path))
    else:
        assert result.used > 0 and result.readings
        for readings in result.readings.values():
            assert (readings.ts[1:] > readings.ts[:-1]).all()


@FUZZ
@given(csv_texts())
def test_readings_csv_from_a_text_stream(text: str) -> None:
    result = bounded(lambda: read_readings_csv(io.StringIO(text), PLANT))
    assert isinstance(result, ReadingsFile | InputError)
