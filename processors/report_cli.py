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

HELP = ("报表：按读数重算某一时段（日、月、年、区间）的综合能耗，输出 JSON、CSV、Excel、HTML、PDF "
        "(recompute a period from the readings and write the report)")


PERIODS = ("时段按厂区时区的整个自然日计，--from 与 --to 均包含在内（即日报/月报所指的日期）。"
           "Periods are whole local days in the plant's time zone; --from and --to are both included.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``energymon report`` (call on the subcommand's parser)."""
    parser.description = f"{HELP}。{PERIODS}"
    parser.add_argument("--config", type=Path, required=True, help="厂区配置文件 (plant file)")
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--day", metavar="YYYY-MM-DD", help="某一日的报表，当地日期 (report one local day)")
    when.add_argument("--month", metavar="YYYY-MM", help="某一月的报表 (report one month)")
    when.add_argument("--year", metavar="YYYY", help="某一年的报表 (report one year)")
    when.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD",
                      help="报表的第一天（含），与 --to 配合 (first local day, included)")
    parser.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD",
                        help="报表的最后一天（含），与 --from 配合：--from 2026-03-01 --to 2026-03-15 为 15 天 "
                        "(last local day, included)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--readings", type=Path, metavar="CSV", help="读数 CSV 文件：ts,meter_id,value (readings CSV)")
    src.add_argument("--store-file", type=Path, metavar="SQLITE",
                     help="读取 SQLite 存储文件 (read an SQLite store file)")
    src.add_argument("--store-url", metavar="URL",
                     help=("读取此 InfluxDB（/query 上的 InfluxQL：1.x、带 DBRP 映射的 2.x、3）或 VictoriaMetrics，"
                           "其他服务器一律拒绝，退出码 2 (read this InfluxDB or VictoriaMetrics)"))
    parser.add_argument("--out", type=Path, default=None, help="输出目录，默认 report-<时段> (output directory)")
    parser.add_argument("--format", default="json,csv,xlsx,html",
                        help="输出格式，逗号分隔：json、csv、xlsx、html、pdf（pdf 由无头 Chromium 打印 HTML），"
                        "默认 json,csv,xlsx,html (output formats)")
    parser.add_argument("--write-store", action="store_true",
                        help="把重算的时段（acct_* 测量）写入存储 (write the recomputed periods to the store)")
    parser.add_argument("--lookback-hours", type=float, default=48.0,
                        help="时段前后多读的小时数，用于切分跨越时段边界的区间 (lookback hours)")


def main(args: argparse.Namespace) -> int:
    """Run the report (imports pandas and numpy only now)."""
    from energymon.processors.report import main_report

    return main_report(args)
