"""The clock: the only place nurture reads the time. Everything it returns is aware UTC.

``system_clock`` builds the daemon's clock from its settings: the machine's wall clock, or,
for tests only (``NURTURE_CLOCK_OFFSET_FILE``), the wall clock shifted by the seconds a file
holds, so that a test can run a real process whose clock is ahead or steps back.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

__all__ = ["Clock", "OffsetClock", "SystemClock", "system_clock", "utc"]


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class OffsetClock:
    """Tests only: the wall clock plus the seconds ``path`` holds (a number, e.g. ``120`` or
    ``-3600``), read again whenever the file changes, so a test steps a running process's
    clock by writing the file. A missing file, or one that holds no number, keeps the last
    offset (at first none)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._read: tuple[tuple[int, int] | None, timedelta] = (None, timedelta(0))

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset()

    def offset(self) -> timedelta:
        seen, offset = self._read  # one tuple: threads read and replace it whole
        try:
            stat = os.stat(self.path)
        except OSError:
            return offset
        if (stat.st_mtime_ns, stat.st_size) != seen:
            try:
                offset = timedelta(seconds=float(self.path.read_text().strip()))
            except (OSError, ValueError):
                return offset
            self._read = ((stat.st_mtime_ns, stat.st_size), offset)
        return offset


def system_clock(offset_file: Path | None = None) -> Clock:
    """The daemon's clock: the wall clock, shifted by ``offset_file`` when a test gives one."""
    return SystemClock() if offset_file is None else OffsetClock(offset_file)


def utc(value: datetime) -> datetime:
    """Make a datetime aware UTC (SQLite hands back naive ones that were stored as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
