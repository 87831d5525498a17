"""``energymon report``: the command-line arguments, without the heavy imports (pandas, numpy) of the report.

Wire it into ``energymon/cli.py``::

    from energymon.processors import report_cli
    p = sub.add_parser("report", help=report_cli.HELP)
    report_cli.add_arguments(p)
    ...
    if args.command == "report":
        return report_cli.main(args)

Errors: a bad plant file raises ``ConfigError`` (exit 2 in ``cli.main``), an unreachable store ``StoreError``
(exit 1); a bad period or missing readings source prints a message and returns 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["HELP", "PERIODS", "add_arguments", "main"]

HELP = "recompute a period (day, month, year, range) from the readings; write 报表 as JSON, CSV, Excel, HTML, PDF"


PERIODS = ("Periods are whole local days in the plant's time zone; --from and --to are both included "
           "(the days a 日报/月报 names).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``energymon report`` (call on the subcommand's parser)."""
    parser.description = f"{HELP}. {PERIODS}"
    parser.add_argument("--config", type=Path, required=True, help="plant file")
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--day", metavar="YYYY-MM-DD", help="report one local day")
    when.add_argument("--month", metavar="YYYY-MM", help="report one month")
    when.add_argument("--year", metavar="YYYY", help="report one year")
    when.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD",
                      help="first local day reported, included (with --to)")
    parser.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD",
                        help="last local day reported, included (with --from): --from 2026-03-01 --to 2026-03-15 "
                        "is 15 days")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--readings", type=Path, metavar="CSV", help="readings CSV: ts,meter_id,value")
    src.add_argument("--store-file", type=Path, metavar="SQLITE", help="read an SQLite store file")
    src.add_argument("--store-url", metavar="URL",
                     help=("read this InfluxDB (InfluxQL on /query: 1.x, 2.x with a DBRP mapping, 3) or "
                           "VictoriaMetrics; any other server is refused (exit 2)"))
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: report-<period>)")
    parser.add_argument("--format", default="json,csv,xlsx,html",
                        help="comma-separated, any of json, csv, xlsx, html, pdf (pdf prints the HTML with headless "
                        "Chromium; default json,csv,xlsx,html)")
    parser.add_argument("--write-store", action="store_true",
                        help="write the recomputed periods (acct_* measurements) to the store")
    parser.add_argument("--lookback-hours", type=float, default=48.0,
                        help="readings read before and after the period, to split the intervals across its ends")


def main(args: argparse.Namespace) -> int:
    """Run the report (imports pandas and numpy only now)."""
    from energymon.processors.report import main_report

    return main_report(args)
