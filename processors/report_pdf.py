"""Print the HTML report to PDF with headless Chromium (``energymon report --format pdf``).

The page carries its own print rules (A4, margins, page breaks kept out of tables and charts, a running footer
with the enterprise and period), so the PDF is what a plant files. Chromium is found on ``PATH`` as
``chromium``, ``chromium-browser`` or ``google-chrome``, or given by the ``ENERGYMON_CHROMIUM`` environment
variable. The browser runs with a throw-away profile, no network services and no sandbox (it only opens the
local file), and is stopped after ``timeout_s``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from energymon.errors import EnergymonError

__all__ = ["ReportError", "find_chromium", "print_pdf"]


class ReportError(EnergymonError):
    """A report could not be written (for PDF: no browser, or the browser failed)."""


def find_chromium() -> str:
    """Path of the Chromium binary.

    Raises:
        ReportError: none was found.
    """
    env = os.environ.get("ENERGYMON_CHROMIUM")
    if env:
        if not Path(env).exists():
            raise ReportError(f"ENERGYMON_CHROMIUM={env}: no such file")
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    raise ReportError("PDF needs headless Chromium: install it (Debian: apt-get install chromium) or set "
                      "ENERGYMON_CHROMIUM to its path; --format html writes the page to print by hand")


def print_pdf(html_path: Path, pdf_path: Path, *, timeout_s: float = 180.0) -> Path:
    """Print ``html_path`` to ``pdf_path`` and return it.

    Raises:
        ReportError: no Chromium, it failed, timed out, or wrote no PDF.
    """
    browser = find_chromium()
    pdf_path = pdf_path.resolve()
    pdf_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="energymon-pdf-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
               "--disable-extensions", f"--user-data-dir={profile}", "--no-pdf-header-footer",
               f"--print-to-pdf={pdf_path}", html_path.resolve().as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ReportError(f"Chromium did not print {html_path} within {timeout_s:g} s") from exc
        except OSError as exc:
            raise ReportError(f"could not start Chromium ({browser}): {exc}") from exc
    if done.returncode != 0 or not pdf_path.exists() or pdf_path.stat().st_size == 0:
        tail = (done.stderr or "").strip().splitlines()[-3:]
        raise ReportError(f"Chromium failed to print {html_path} (exit {done.returncode}): {' | '.join(tail)}")
    return pdf_path
