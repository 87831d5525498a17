"""The Jiangxi example plant files: a copper smelter, a ceramics plant and a public building (hospital).

Each validates, its simulated meters (the same :class:`PlantModel` that ``energymon simulate`` serves) give a day
of readings that the report path turns into the numbers a Jiangxi energy manager expects: the Jiangxi grid
factor named, the copper and tile indicators computed and reported as 无数值 (the notices' figures are not in the
reference data), the hospital judged per m² and per person against its 定额.
"""

from __future__ import annotations

import io
import re
from datetime import datetime
from importlib import resources
from pathlib import Path

import pytest
from services import free_port

from energymon.cli import main
from energymon.clock import ManualClock
from energymon.config import PlantConfig, load_plant
from energymon.processors.report import ReportPeriod, load_readings_csv, run_report
from energymon.simulators.plant import PlantModel

EXAMPLES = ("jiangxi_copper_smelter", "jiangxi_ceramics_plant", "jiangxi_public_building")


def example(name: str) -> Path:
    return Path(str(resources.files("energymon.examples").joinpath(f"{name}.yaml")))


def simulated_day(plant: PlantConfig) -> dict[str, object]:
    """The report of 2 March 2026 from 15-minute counter readings of the simulated meters."""
    tz = plant.enterprise.tz
    start = int(datetime(2026, 3, 2, tzinfo=tz).timestamp() * 1000)
    model = PlantModel(plant, ManualClock(datetime(2026, 3, 2, tzinfo=tz)))
    lines = ["ts,meter_id,value"]
    for meter in plant.meters:
        if meter.counter is None:
            continue
        for i in range(97):
            ts = start + i * 900_000
            value = model.value(meter.id, meter.counter, ts)
            iso = datetime.fromtimestamp(ts / 1000, tz).isoformat()
            lines.append(f"{iso},{meter.id},{value!r}")
    readings = load_readings_csv(io.StringIO("\n".join(lines) + "\n"), plant)
    _rc, report = run_report(plant, ReportPeriod.parse("day", "2026-03-02", None), readings)
    return report


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_validates_and_is_in_jiangxi(name: str) -> None:
    plant = load_plant(example(name))
    assert plant.enterprise.province == "jiangxi"
    assert plant.accounting.co2.grid_kind == "average"


def test_copper_smelter_reports_its_indicator_and_no_invented_grade() -> None:
    report = simulated_day(load_plant(example("jiangxi_copper_smelter")))
    assert "jiangxi/average" in report["rules"]["grid_co2_factor"]  # type: ignore[index]
    product = report["products"]["cathode_copper"]  # type: ignore[index]
    ind = product["indicators"]["copper_smelting"]
    assert 100 < ind["value"] < 400, ind  # kgce per t of cathode copper
    assert ind["judgement"] == "无数值" and "1609号" in ind["reason"]
    assert product["output"] > 1000  # about 50 t an hour
    assert product.get("kgce_recovered", 0) > 0  # waste-heat steam reported, not added


def test_ceramics_plant_reports_kgce_per_m2() -> None:
    report = simulated_day(load_plant(example("jiangxi_ceramics_plant")))
    ind = report["products"]["porcelain_tile"]["indicators"]["building_ceramics_water_absorption_le_0_5"]  # type: ignore[index]
    assert ind["unit"] == "kgce/m2" and 0.5 < ind["value"] < 10, ind
    assert ind["judgement"] == "无数值"


def test_public_building_is_judged_per_m2_and_per_person() -> None:
    report = simulated_day(load_plant(example("jiangxi_public_building")))
    building = report["building"]  # type: ignore[index]
    assert building["climate_zone_zh"] == "夏热冬冷地区" and building["days"] == 1.0
    per_m2 = building["indicators"]["kgce_per_m2"]
    assert per_m2["gbt51161"]["judgement"] == "无数值"
    assert per_m2["quotas"][0]["judgement"] in ("定额内", "超出定额")
    assert per_m2["annual_value"] == pytest.approx(per_m2["period_value"] * 365, rel=1e-3)
    assert 30 < building["indicators"]["electricity_kwh_per_m2"]["annual_value"] < 300


@pytest.mark.parametrize("name", EXAMPLES)
def test_energymon_simulate_serves_the_example(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``energymon simulate`` serves the example's Modbus meters (on a free port instead of the file's)."""
    text = example(name).read_text(encoding="utf-8")
    port = free_port()
    text = re.sub(r"port: 1502\d", f"port: {port}", text)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["simulate", "--config", str(path), "--duration", "0.5"]) == 0
    assert f"serving on 127.0.0.1:{port}" in capsys.readouterr().out


def test_live_page_says_no_figure_for_the_copper_indicator(tmp_path: Path) -> None:
    from energymon.config import SqliteStoreConfig
    from energymon.processors.store import SqliteStore
    from energymon.web import Overview, SqliteReader

    plant = load_plant(example("jiangxi_copper_smelter"))
    store = SqliteStore(SqliteStoreConfig(type="sqlite", path=tmp_path / "s.sqlite"))
    try:
        clock = ManualClock(datetime(2026, 3, 2, 12, tzinfo=plant.enterprise.tz))
        snap = Overview(plant, SqliteReader(store), clock=clock).snapshot()
        (item,) = snap["indicators"]
        assert item["indicator"] == "copper_smelting" and "1609号" in item["no_figure"]
    finally:
        store.close()
