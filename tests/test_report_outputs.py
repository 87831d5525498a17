"""What the energy manager hands on: the Excel workbook read back figure by figure against the JSON, the CSV
files as Excel on Chinese Windows reads them, the printed HTML/PDF, and the --format contract."""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import yaml
from test_report import as_readings, ms, reading_rows, synthetic

from energymon.config import PlantConfig, SqliteStoreConfig, load_plant
from energymon.demo import example_plant_path
from energymon.processors.report import ReportPeriod, add_arguments, main_report, render_html, run_report
from energymon.processors.report_html import nice_ticks, svg_chart
from energymon.processors.store import SqliteStore

MEASURED_LHV = 22_989.0  # kJ/kg → 0.7844 kgce/kg, against the reference 0.7143


def plant_file(tmp_path: Path, *, products: bool = True, measured: bool = True) -> Path:
    doc = yaml.safe_load(example_plant_path().read_text(encoding="utf-8"))
    if measured:
        doc["accounting"] = {"coefficient_overrides": [
            {"carrier": "raw_coal", "lhv_kj_per_unit": MEASURED_LHV, "unit": "kg", "effective_from": "2026-01-01",
             "source": "化验单 2026-001"}]}
    if not products:
        doc["products"] = []
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def month_readings(gap: bool = True) -> dict[str, list[tuple[int, float]]]:
    data = synthetic(days=31)
    if gap:  # the kiln meter is silent 06:00-12:00 on 10 March
        lo, hi = ms(2026, 3, 10, 6), ms(2026, 3, 10, 12)
        data["kiln_drive"] = [(t, v) for t, v in data["kiln_drive"] if not lo < t < hi]
    return data


def run(tmp_path: Path, plant_path: Path, *extra: str, data: Any = None) -> tuple[int, Path, str]:
    db = tmp_path / "plant.sqlite"
    plant = load_plant(plant_path)
    if not db.exists():
        with SqliteStore(SqliteStoreConfig(type="sqlite", path=db)) as store:
            store.write(reading_rows(plant, data or month_readings()))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["--config", str(plant_path), "--store-file", str(db), "--month", "2026-03",
                              "--out", str(out), *extra])
    printed = io.StringIO()
    return main_report(args, printed), out, printed.getvalue()


# --------------------------------------------------------------------------- reading the workbook back


def sheet_rows(ws: Any) -> list[list[Any]]:
    return [list(r) for r in ws.iter_rows(values_only=True)]


def row_where(rows: list[list[Any]], col: int, value: Any, after: int = 0) -> list[Any]:
    for r in rows[after:]:
        if len(r) > col and r[col] == value:
            return r
    raise AssertionError(f"no row with {value!r} in column {col}")


def same(cell: Any, expected: Any) -> bool:
    if expected is None:
        return cell is None
    if isinstance(expected, bool):
        return cell == ("是" if expected else "否")
    if isinstance(expected, int | float):
        return isinstance(cell, int | float) and cell == pytest.approx(expected, abs=1e-9)
    return bool(cell == expected)


def check_wide(ws: Any, dates: list[str], columns: dict[str, list[Any]]) -> int:
    """Every column's values under its header, rows keyed by ``dates``; returns the cells compared."""
    rows = sheet_rows(ws)
    header = rows[1]
    assert [r[0] for r in rows[2:2 + len(dates)]] == dates
    n = 0
    for name, values in columns.items():
        assert name in header, f"{ws.title}: no column {name!r} in {header}"
        col = header.index(name)
        got = [r[col] for r in rows[2:2 + len(dates)]]
        for g, want in zip(got, values, strict=True):
            assert same(g, want), f"{ws.title} {name}: {g!r} != {want!r}"
            n += 1
    return n


def test_workbook_holds_every_figure_of_the_json(tmp_path: Path) -> None:
    code, out, _ = run(tmp_path, plant_file(tmp_path))
    assert code == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    book = openpyxl.load_workbook(out / "report.xlsx")
    assert book.sheetnames == ["综合", "产品日报", "计量日报", "产品月报", "计量月报", "数据质量", "折标系数",
                               "计量器具", "说明"]
    names = report["names"]
    compared = 0
    # ---- summary
    s = sheet_rows(book["综合"])
    tot, ytd = report["totals"], report["totals"]["ytd"]
    for label, key in (("综合能耗（当量值）", "tce"), ("综合能耗（等价值）", "tce_equal"),
                       ("原料用能", "tce_feedstock"), ("能耗双控口径（不含原料用能）", "tce_dual_control"),
                       ("外供/输出（已扣除）", "tce_exported"), ("余热余能回收利用（不重复计入）", "tce_recovered"),
                       ("CO2 排放", "co2_t")):
        r = row_where(s, 0, label)
        assert same(r[1], tot.get(key)) and same(r[2], ytd.get(key)), (label, r)
        compared += 2
    assert "等价值" in row_where(s, 0, "综合能耗（等价值）")[4]  # the reason a missing figure is missing
    assert tot.get("co2_t") is None and "原煤" in row_where(s, 0, "CO2 排放")[4]
    for c, v in tot["by_carrier"].items():
        r = row_where(s, 1, c)
        assert r[0] == names["carriers"][c]
        assert same(r[2], v["consumed"]) and r[3] == v["unit"] and same(r[5], v["kgce"])
        assert same(r[4], report["carriers"][c]["kgce_per_unit"]) and same(r[6], v.get("co2_t"))
        compared += 4
    p = report["products"]["clinker"]
    ind = p["indicators"]["cement_clinker"]
    r = row_where(s, 1, "clinker")
    assert same(r[2], p["output"]) and same(r[4], p["kgce"]) and same(r[6], ind["value"])
    assert r[8] == ind["judgement"] and r[9] == ind["status_label"] and same(r[10], ind["ytd"]["value"])
    compared += 4
    levels_at = next(i for i, row in enumerate(s) if row[:3] == ["产品", "指标", "等级"])
    for lv, value in ind["levels"].items():
        r = row_where(s, 2, names["levels"][lv], after=levels_at)
        assert same(r[3], value) and same(r[4], ind["gaps"][lv]["units"]) and same(r[5], ind["gaps"][lv]["pct"])
        compared += 3
    for g, b in report["balance"].items():
        r = row_where(s, 0, g)
        assert [same(r[i], b[k]) for i, k in ((2, "parents"), (3, "children"), (4, "loss"), (5, "loss_pct"))] == [
            True] * 4
        compared += 4
    # ---- daily and monthly sheets
    daily, monthly = report["daily"], report["monthly"]
    dp, mp = daily["products"]["clinker"], monthly["products"]["clinker"]
    indicator = names["indicators"]["cement_clinker"]
    grade = {1: "1级", 2: "2级", 3: "3级", 4: "未达标", None: None}
    compared += check_wide(book["产品日报"], daily["dates"], {
        "企业综合能耗 (kgce)": daily["enterprise_kgce"], "水泥熟料 产量 (t)": dp["output"],
        "水泥熟料 综合能耗 (kgce)": dp["kgce"], f"{indicator} (kgce/t)": dp["value"],
        "水泥熟料 等级": [grade[g] for g in dp["quota_grade"]]})
    compared += check_wide(book["产品月报"], monthly["months"], {
        "企业综合能耗 (kgce)": monthly["enterprise_kgce"], "水泥熟料 产量 (t)": mp["output"],
        f"{indicator} (kgce/t)": mp["value"]})
    meter_cols = {f"{names['meters'][m]} [{m}] ({v['unit']})": v["consumed"] for m, v in daily["meters"].items()}
    assert len(meter_cols) == len(report["meters"]) == 8
    compared += check_wide(book["计量日报"], daily["dates"], meter_cols)
    compared += check_wide(book["计量月报"], monthly["months"],
                           {f"{names['meters'][m]} [{m}] ({v['unit']})": v["consumed"]
                            for m, v in monthly["meters"].items()})
    # ---- data quality: located by meter, day and amount
    q = sheet_rows(book["数据质量"])
    dq = report["data_quality"]
    for m, c in dq["completeness"].items():
        r = row_where(q, 0, f"{names['meters'][m]} [{m}]")
        assert [r[1], r[2]] == [c["days"], c["incomplete_days"]] and same(r[3], c["min_pct"])
        compared += 3
    assert dq["gaps"] and dq["gaps"][0]["meter"] == "kiln_drive"
    gap = dq["gaps"][0]
    r = row_where(q, 1, gap["start"])
    assert r[0] == "回转窑及风机 [kiln_drive]" and r[2] == gap["end"]
    assert same(r[3], gap["hours"]) and same(r[4], gap["amount"]) and same(r[5], gap["in_window"])
    assert gap["hours"] == pytest.approx(6.0) and gap["amount"] == pytest.approx(900.0 * 6)
    compared += 3
    bad = dq["completeness"]["kiln_drive"]["incomplete_detail"]
    assert [d["day"] for d in bad] == ["2026-03-10"]
    r = row_where(q, 1, "2026-03-10")
    assert r[2] == bad[0]["readings"] and r[3] == bad[0]["expected"] and same(r[4], bad[0]["completeness_pct"])
    # ---- coefficients: the measured LHV beside the default it replaces
    k = sheet_rows(book["折标系数"])
    coal = report["carriers"]["raw_coal"]
    r = row_where(k, 1, "raw_coal")
    assert coal["measured"] is True and same(r[3], coal["kgce_per_unit"]) and same(r[6], coal["default_kgce_per_unit"])
    assert coal["kgce_per_unit"] == pytest.approx(784.4, abs=0.05)  # per t; 0.7844 kgce/kg
    assert coal["default_kgce_per_unit"] == pytest.approx(0.7143) and r[7] and "化验单" in r[4]
    for c, v in report["carriers"].items():
        r = row_where(k, 1, c)
        assert same(r[3], v["kgce_per_unit"]) and same(r[8], v["equal_kgce_per_unit"])
        assert same(r[10], v["co2_kg_per_unit"]) and r[9] == v["equal_source"] and r[11] == v["co2_source"]
        compared += 3
    # ---- meters: Chinese roles; the production counter is not "consumption"
    mt = sheet_rows(book["计量器具"])
    for m, v in report["meters"].items():
        r = row_where(mt, 1, m)
        assert same(r[6], v["consumed"]) and same(r[8], v.get("kgce")) and r[3] == names["roles"][v["role"]]
        compared += 2
    assert report["meters"]["clinker_scale"]["role"] == "production"
    assert row_where(mt, 1, "clinker_scale")[3] == "产量计量"
    assert compared > 400
    # numbers are numbers, and the charts are native Excel charts
    assert all(isinstance(x, float | int) for x in [r[1] for r in sheet_rows(book["产品日报"])[2:33]])
    with zipfile.ZipFile(out / "report.xlsx") as z:
        charts = [n for n in z.namelist() if n.startswith("xl/charts/chart")]
        assert len(charts) >= 4  # 综合能耗 and the indicator trend, daily and monthly
        trend = z.read(charts[1]).decode("utf-8")
        assert "标杆 100" in trend and "基准 117" in trend


def test_csv_files_open_in_excel_and_a_plant_without_products_still_gets_its_daily_energy(tmp_path: Path) -> None:
    code, out, _ = run(tmp_path, plant_file(tmp_path, products=False), "--format", "csv,xlsx")
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"report.csv", "daily.csv", "report.xlsx"}
    raw = (out / "daily.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    lines = raw.decode("utf-8-sig").splitlines()
    assert len(lines) == 32
    header = lines[0].split(",")
    assert header[:2] == ["日期", "企业综合能耗 (kgce)"] and "110 kV 进线总表 [incoming] (kWh)" in header
    first = dict(zip(header, lines[1].split(","), strict=True))
    assert float(first["110 kV 进线总表 [incoming] (kWh)"]) == pytest.approx(3000.0 * 24)
    book = openpyxl.load_workbook(out / "report.xlsx")
    assert "产品日报" in book.sheetnames and "计量日报" in book.sheetnames


@pytest.mark.parametrize("formats", ["xlsx,docx", "", "json;csv"])
def test_every_format_value_works_or_is_refused(tmp_path: Path, formats: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(tmp_path, plant_file(tmp_path), "--format", formats)
    assert code == 2 and not out.exists()
    assert "--format" in capsys.readouterr().err


def test_html_reads_as_a_chinese_document(tmp_path: Path) -> None:
    plant = load_plant(plant_file(tmp_path))
    _rc, report = run_report(plant, ReportPeriod.parse("month", "2026-03"), as_readings(month_readings()))
    page = render_html(report)
    for text in ("综合能耗", "标杆", "基准", "原煤", "电力", "化验单 2026-001", "参考值 0.7143",
                 "no 等价值 for 2026", "no CO2 factor for &#x27;raw_coal&#x27;", "缺测区间及估算量",
                 "回转窑及风机 [kiln_drive]", "2026-03-10 06:00", "5,400.0", "产量计量", "计量点逐日用量", "第 "):
        assert text in page, text
    for raw in ("grade_1", "benchmark</td>", ">raw_coal<", "e+0"):
        assert raw not in page, raw
    assert "基准 / 3级（限额） 117" in page  # equal levels share one label instead of overprinting


def test_chart_labels_never_overlap_and_axes_use_thousands_separators() -> None:
    svg = svg_chart([321_900.0, 322_400.0], ["2026-03-01", "2026-03-02"], "综合能耗", "kgce",
                    [("benchmark", "标杆", 300_000.0), ("baseline", "基准", 301_000.0), ("grade_3", "3级", 301_000.0)])
    assert "e+" not in svg and "300,000" in svg and "基准 / 3级 301,000" in svg
    ys = sorted(float(part.split('y="')[1].split('"')[0]) for part in svg.split("<text")[1:] if "class=\"l r" in part)
    assert len(ys) == 2 and ys[1] - ys[0] >= 12
    assert nice_ticks(0, 96.95) == [0, 25, 50, 75, 100]
    assert nice_ticks(0, 0.73) == [0, 0.2, 0.4, 0.6, 0.8]


@pytest.mark.integration
def test_pdf_prints_through_headless_chromium(tmp_path: Path) -> None:
    from pypdf import PdfReader

    code, out, printed = run(tmp_path, plant_file(tmp_path), "--format", "pdf")
    assert code == 0, printed
    assert {p.name for p in out.iterdir()} == {"report.pdf"}
    pdf = PdfReader(out / "report.pdf")
    n = len(pdf.pages)
    assert n >= 3
    for page in pdf.pages:  # A4 portrait
        assert float(page.mediabox.width) == pytest.approx(595.3, abs=1.5)
        assert float(page.mediabox.height) == pytest.approx(841.9, abs=1.5)
    first = pdf.pages[0].extract_text()
    assert "示例水泥有限公司" in first and "综合能耗" in first
    text = "".join(p.extract_text() for p in pdf.pages)
    assert "缺测区间及估算量" in text and "基准 / 3级（限额） 117" in text
    assert f"第 {n} / {n} 页" in pdf.pages[-1].extract_text()  # the running footer


def test_plant_config_fixture_is_valid(tmp_path: Path) -> None:
    assert isinstance(load_plant(plant_file(tmp_path)), PlantConfig)


def test_from_and_to_are_both_included_and_say_so_in_help(tmp_path: Path) -> None:
    plant_path = plant_file(tmp_path)
    db = tmp_path / "plant.sqlite"
    with SqliteStore(SqliteStoreConfig(type="sqlite", path=db)) as store:
        store.write(reading_rows(load_plant(plant_path), month_readings()))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", str(plant_path), "--store-file", str(db), "--from", "2026-03-01",
                              "--to", "2026-03-15", "--out", str(tmp_path / "r"), "--format", "json"])
    assert main_report(args, io.StringIO()) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert report["daily"]["dates"][0] == "2026-03-01" and report["daily"]["dates"][-1] == "2026-03-15"
    assert report["period"]["label"] == "2026-03-01_2026-03-15"
    args = parser.parse_args(["--config", str(plant_path), "--store-file", str(db), "--from", "2026-03-05",
                              "--to", "2026-03-04", "--out", str(tmp_path / "bad")])
    assert main_report(args, io.StringIO()) == 2 and not (tmp_path / "bad").exists()
    from energymon.cli import build_parser

    helps = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in ("report", "history"):
        text = helps[command].format_help()
        assert "included" in text, command
    uplink = helps["uplink"]._subparsers._group_actions[0].choices["send"].format_help()  # type: ignore[union-attr]
    assert "inclusive" in uplink or "included" in uplink


def test_pdf_without_a_browser_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from energymon.cli import main

    monkeypatch.setenv("ENERGYMON_CHROMIUM", str(tmp_path / "no-such-chromium"))
    plant_path = plant_file(tmp_path)
    db = tmp_path / "plant.sqlite"
    with SqliteStore(SqliteStoreConfig(type="sqlite", path=db)) as store:
        store.write(reading_rows(load_plant(plant_path), month_readings()))
    out = tmp_path / "out"
    code = main(["report", "--config", str(plant_path), "--store-file", str(db), "--day", "2026-03-02",
                 "--format", "pdf", "--out", str(out)])
    assert code == 1 and "ENERGYMON_CHROMIUM" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # no half-written files left behind


def test_a_missing_indicator_says_why(tmp_path: Path) -> None:
    plant = load_plant(plant_file(tmp_path))
    data = month_readings(gap=False)
    del data["clinker_scale"]  # no output counted
    _rc, report = run_report(plant, ReportPeriod.parse("day", "2026-03-02"), as_readings(data))
    ind = report["products"]["clinker"]["indicators"]["cement_clinker"]
    assert ind["value"] is None and ind["reason"].startswith("本期无产量")
    page = render_html(report)
    assert "水泥熟料单位产品综合能耗：— kgce/t" in page and "本期无产量" in page
    assert "meter clinker_scale: no readings" in page  # the note says which meter is silent
