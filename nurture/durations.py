"""Durations as marketers write them: ``30s``, ``10m``, ``12h``, ``3d``, ``2w``, ``1h30m``."""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["parse_duration", "format_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"([0-9]+)\s*([smhdw])")
_WHOLE = re.compile(r"^\s*(?:[0-9]+\s*[smhdw]\s*)+$")


def parse_duration(text: object) -> timedelta:
    """Parse a duration; raise ValueError with a sentence a marketer understands."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ValueError(
            f"{text!r} is not a duration: write a number and a unit, e.g. 3d, 12h, 30m"
        )
    if isinstance(text, int) and text < 0:
        raise ValueError(f"{text!r} is not a duration: write a number and a unit, e.g. 3d")
    if str(text).strip() == "0":
        return timedelta(0)
    if (isinstance(text, int) and text > 0) or (
        isinstance(text, str) and re.fullmatch(r"\s*[0-9]+\s*", text) is not None
    ):
        n = str(text).strip()
        raise ValueError(
            f"{text!r} has no unit: write e.g. {n}s, {n}m, {n}h or {n}d (units: s, m, h, d, w)"
        )
    if isinstance(text, int) or not _WHOLE.match(text):
        raise ValueError(
            f"{text!r} is not a duration: write a number and a unit, e.g. 3d, 12h, 30m, 1s "
            "(units: s, m, h, d, w)"
        )
    seconds: int = sum(int(n) * _UNITS[u] for n, u in _PART.findall(text))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of a duration, e.g. ``1d2h``; ``0s`` for zero."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)
