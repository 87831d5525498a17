"""Dead-letter files: what a stage set aside, one JSON object per physical line, rotated by size.

A record is written with ``ensure_ascii=True``, so every non-ASCII character, U+2028/U+2029 and control
characters included, is escaped: a line splitter (``splitlines``, ``wc -l``, ``jq``) counts exactly one entry per
record. When a record would take the file beyond ``max_bytes`` the file is rotated first, the way logrotate
does: ``name`` → ``name.1`` → ``name.2`` …, keeping ``files`` rotated files and deleting the oldest. A record
larger than ``max_bytes`` on its own still goes whole into a fresh file: a dead letter is never cut.

Read them back with :func:`read_dead_letters` (oldest first, across the rotated files).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["DeadLetterFile", "read_dead_letters"]


class DeadLetterFile:
    """An append-only JSON-lines file rotated by size (thread-safe).

    Args:
        path: the current file; rotated files are ``path.1`` (newest) to ``path.{files}``.
        max_bytes: rotate before a record would make the current file larger than this.
        files: rotated files kept.
    """

    def __init__(self, path: Path, *, max_bytes: int = 64 * 1024 * 1024, files: int = 5) -> None:
        if max_bytes < 1 or files < 1:
            raise ValueError("max_bytes and files must be positive")
        self.path = path
        self.max_bytes = max_bytes
        self.files = files
        self._lock = threading.Lock()

    def rotated(self, n: int) -> Path:
        """The ``n``-th rotated file (1 is the newest)."""
        return self.path.with_name(f"{self.path.name}.{n}")

    def write(self, record: Mapping[str, Any]) -> int:
        """Append one record as one line; returns the bytes written.

        Raises:
            OSError: the file cannot be written (the caller counts and logs it).
        """
        line = (json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str) + "\n").encode("ascii")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > self.max_bytes:
                self._rotate()
            with self.path.open("ab") as fh:
                fh.write(line)
        return len(line)

    def _rotate(self) -> None:
        oldest = self.rotated(self.files)
        if oldest.exists():
            oldest.unlink()
        for n in range(self.files - 1, 0, -1):
            src = self.rotated(n)
            if src.exists():
                os.replace(src, self.rotated(n + 1))
        os.replace(self.path, self.rotated(1))


def read_dead_letters(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of a dead-letter file and its rotated files, oldest first."""
    rotated = sorted(
        (p for p in path.parent.glob(f"{path.name}.*") if p.name[len(path.name) + 1 :].isdigit()),
        key=lambda p: int(p.name[len(path.name) + 1 :]),
        reverse=True,
    )
    for file in [*rotated, path]:
        if not file.exists():
            continue
        with file.open("rb") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
