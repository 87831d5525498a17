"""``energymon report`` with the files and flags a user gets wrong: every malformed readings CSV, a mistyped
``--store-file`` and a bad period give a clear message naming the file, line or flag and exit 2 (no traceback,
no report of zeros); conflicting duplicate readings are used deterministically and shown in data quality."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from energymon import cli
from energymon.config import PlantConfig, load_plant
from energymon.demo import example_plant_path
from energymon.errors import InputError
from energymon.processors.readings_csv import read_readings_csv

SH = ZoneInfo("Asia/Shanghai")
HEADER = "ts,meter_id,value\n"
GOOD = "2026-03-05T00:00:00+08:00,kiln_drive,1000\n2026-03-06T00:00:00+08:00,kiln_drive,1900\n"


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=SH).timestamp() * 1000)  # type: ignore[misc]


@pytest.fixture(scope="module")
def plant() -> PlantConfig:
    return load_plant(example_plant_path())


def report(tmp_path: Path, *extra: str, day: str = "2026-03-05") -> list[str]:
    return ["report", "--config", str(example_plant_path()), "--day", day, "--out", str(tmp_path / "out"),
            *extra]


#: (name, file content, expected line or None, words the message must contain)
BAD_FILES: list[tuple[str, bytes, int | None, str]] = [
    ("empty", b"", None, "empty"),
    ("blank_lines", b"\n\n  \n", None, "empty"),
    ("header_only", HEADER.encode(), None, "no usable reading"),
    ("no_header", GOOD.encode(), 1, "no header line"),
    ("no_header_epoch", f"{ms(2026, 3, 5)},kiln_drive,1000\n".encode(), 1, "no header line"),
    ("missing_column", b"ts,meter_id\n2026-03-05T00:00:00+08:00,kiln_drive\n", 1, "lacks column(s) value"),
    ("wrong_header", b"time,id,reading\n2026-03-05T00:00:00+08:00,kiln_drive,1\n", 1, "lacks column(s) ts"),
    ("duplicate_column", b"ts,meter_id,value,value\n", 1, "twice: value"),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 3, "NUL"),
    ("latin1", "ts,meter_id,value\n2026-03-05T00:00:00+08:00,kïln,1\n".encode("latin-1"), 2, "UTF-8"),
    ("not_a_date", (HEADER + "not-a-date,kiln_drive,1\n").encode(), 2, "neither epoch milliseconds nor an ISO"),
    ("impossible_date", (HEADER + "2026-02-30T00:00:00+08:00,kiln_drive,1\n").encode(), 2, "not a valid time"),
    ("impossible_hour", (HEADER + GOOD + "2026-03-05T25:00:00,kiln_drive,1\n").encode(), 4, "not a valid time"),
    ("empty_ts", (HEADER + ",kiln_drive,1\n").encode(), 2, "ts is empty"),
    ("epoch_seconds", (HEADER + f"{ms(2026, 3, 5) // 1000},kiln_drive,1\n").encode(), 2, "epoch seconds"),
    ("year_3000", (HEADER + "3000-03-05T00:00:00+08:00,kiln_drive,1\n").encode(), 2, "outside 2000-2099"),
    ("year_1999", (HEADER + "1999-12-31T00:00:00+08:00,kiln_drive,1\n").encode(), 2, "outside 2000-2099"),
    ("epoch_ms_far", (HEADER + "99999999999999,kiln_drive,1\n").encode(), 2, "outside 2000-2099"),
    ("mixed_zones", (HEADER + GOOD + "2026-03-07T00:00:00,kiln_drive,2800\n").encode(), 4, "mix timestamps"),
    ("mixed_epoch_naive", (HEADER + f"{ms(2026, 3, 5)},kiln_drive,1\n2026-03-06 00:00,kiln_drive,2\n").encode(),
     3, "mix timestamps"),
    ("shifted_value", (HEADER + "2026-03-05T00:00:00+08:00,1000,kiln_drive\n").encode(), 2, "not a number"),
    ("shifted_ts", (HEADER + "kiln_drive,2026-03-05T00:00:00+08:00,1000\n").encode(), 2, "neither epoch"),
    ("shifted_meter", (HEADER + "2026-03-05T00:00:00+08:00,1000,1000\n").encode(), None, "not counter meters"),
    ("too_many_fields", (HEADER + GOOD + "2026-03-07T00:00:00+08:00,kiln_drive,1,2\n").encode(), 4, "4 fields"),
    ("too_few_fields", (HEADER + "2026-03-05T00:00:00+08:00,kiln_drive\n").encode(), 2, "2 fields"),
    ("infinite", (HEADER + "2026-03-05T00:00:00+08:00,kiln_drive,inf\n").encode(), 2, "finite"),
    ("unknown_meters", (HEADER + "2026-03-05T00:00:00+08:00,ghost,1\n").encode(), None, "ghost"),
    ("bad_quote", (HEADER + '2026-03-05T00:00:00+08:00,"kiln_drive,1\n').encode(), None, "CSV"),
    ("huge_field", (HEADER + "2026-03-05T00:00:00+08:00,kiln_drive," + "9" * 10_000 + "\n").encode(), 2,
     "longer than"),
    ("other_year", (HEADER + GOOD.replace("2026-03", "2024-03")).encode(), None, "no reading of the file falls"),
]


@pytest.mark.parametrize(("content", "line", "words"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_a_malformed_readings_file_is_named_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, line: int | None, words: str
) -> None:
    path = tmp_path / "readings.csv"
    path.write_bytes(content)
    assert cli.main(report(tmp_path, "--readings", str(path))) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    assert where in err, err
    assert words in err, err
    assert not (tmp_path / "out" / "report.json").exists()


def test_a_missing_readings_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(report(tmp_path, "--readings", str(tmp_path / "nope.csv"))) == 2
    err = capsys.readouterr().err
    assert "nope.csv" in err and "cannot read" in err


def test_dst_gap_and_fold_are_refused(plant: PlantConfig) -> None:
    ny = plant.model_copy(update={"enterprise": plant.enterprise.model_copy(update={"timezone": "America/New_York"})})
    gap = HEADER + "2026-03-08T02:30:00,kiln_drive,1\n"
    with pytest.raises(InputError, match="does not exist"):
        read_readings_csv(_text(gap), ny)
    fold = HEADER + "2026-11-01T01:30:00,kiln_drive,1\n"
    with pytest.raises(InputError, match="happens twice"):
        read_readings_csv(_text(fold), ny)


def _text(text: str):  # type: ignore[no-untyped-def]
    import io

    return io.StringIO(text)


def test_conflicting_duplicates_are_deterministic_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [f"{datetime(2026, 3, 5, h, tzinfo=SH).isoformat()},kiln_drive,{1000 + 100 * h}" for h in range(24)]
    rows.append(f"{datetime(2026, 3, 6, tzinfo=SH).isoformat()},kiln_drive,3400")
    rows.insert(5, f"{datetime(2026, 3, 5, 12, tzinfo=SH).isoformat()},kiln_drive,9999")  # line 8, vs line 16
    rows.insert(3, rows[2])  # an identical duplicate is no conflict
    path = tmp_path / "readings.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    assert cli.main(report(tmp_path, "--readings", str(path))) == 0
    err = capsys.readouterr().err
    assert "1 conflicting duplicate reading(s)" in err and "kiln_drive" in err and "lines 8, 16" in err
    rep = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    rf = rep["data_quality"]["readings_file"]
    assert rep["data_quality"]["summary"]["conflicting_readings"] == 1
    assert rf["conflicting_readings"] == 1 and rf["identical_duplicates"] == 1
    example = rf["conflicts"]["kiln_drive"]["examples"][0]
    assert example["lines"] == [8, 16] and example["values"] == [9999.0, 2200.0] and example["used"] == 2200.0
    assert "Conflicting duplicate readings: 1" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    # the last row in the file wins: swapped, the other value is used
    got = read_readings_csv(path, load_plant(example_plant_path()))
    at_noon = got.readings["kiln_drive"].ts == ms(2026, 3, 5, 12)
    assert got.readings["kiln_drive"].value[at_noon].tolist() == [2200.0]
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[7], lines[15] = lines[15], lines[7]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    swapped = read_readings_csv(path, load_plant(example_plant_path()))
    assert swapped.readings["kiln_drive"].value[at_noon].tolist() == [9999.0]


def test_left_out_rows_are_counted(plant: PlantConfig) -> None:
    text = ("ts,meter_id,value,quality,quantity\n"
            "2026-03-05T00:00:00+08:00,kiln_drive,1,good,energy_active_import\n"
            "2026-03-05T01:00:00+08:00,kiln_drive,2,uncertain,energy_active_import\n"
            "2026-03-05T02:00:00+08:00,kiln_drive,3,good,power_active\n"
            "2026-03-05T03:00:00+08:00,ghost,4,good,energy_active_import\n"
            "2026-03-05T04:00:00+08:00,kiln_drive,,good,energy_active_import\n")
    got = read_readings_csv(_text(text), plant)
    assert got.rows == 5 and got.used == 1 and got.unknown_meters == ["ghost"]
    assert got.skipped == {"not_good": 1, "other_quantity": 1, "unknown_meter": 1, "no_value": 1}


def test_a_mistyped_store_file_is_refused_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "energymon.sqlte"
    assert cli.main(report(tmp_path, "--store-file", str(typo))) == 2
    err = capsys.readouterr().err
    assert "--store-file" in err and "does not exist" in err
    assert not typo.exists()
    text = tmp_path / "notes.txt"
    text.write_text("hello", encoding="utf-8")
    assert cli.main(report(tmp_path, "--store-file", str(text))) == 2
    assert "not an SQLite database" in capsys.readouterr().err
    sqlite3.connect(tmp_path / "empty.sqlite").execute("create table x(a)").connection.close()
    assert cli.main(report(tmp_path, "--store-file", str(tmp_path / "empty.sqlite"))) in (0, 1)  # a real file


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--day", "2026-02-30", "--day 2026-02-30: not a valid day"),
    ("--day", "yesterday", "--day yesterday: not a valid day"),
    ("--month", "2026-13", "--month 2026-13: not a valid month"),
    ("--year", "3000", "--year 3000: the period must lie within 2000-2099"),
    ("--year", "twenty", "--year twenty: not a valid year"),
])
def test_a_bad_period_names_its_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, words: str
) -> None:
    argv = ["report", "--config", str(example_plant_path()), flag, value, "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_bad_lookback_and_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.csv"
    path.write_text(HEADER + GOOD, encoding="utf-8")
    assert cli.main(report(tmp_path, "--readings", str(path), "--lookback-hours", "nan")) == 2
    assert "--lookback-hours" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    argv = ["report", "--config", str(example_plant_path()), "--day", "2026-03-05", "--readings", str(path),
            "--out", str(blocker / "sub")]
    assert cli.main(argv) == 2
    assert "--out" in capsys.readouterr().err
