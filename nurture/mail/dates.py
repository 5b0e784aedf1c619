"""Return dates as out-of-office answers write them: "back on 14 January", "ab dem
14.01.2026", "de retour le 1er février", "hasta el 14 de enero", 01/14/2026."""

from __future__ import annotations

import contextlib
import re
from datetime import date, timedelta

__all__ = ["find_return_date"]

_MONTHS = {
    # English
    "january": 1,
    "february": 2,
    "march": 3,
    "april": 4,
    "may": 5,
    "june": 6,
    "july": 7,
    "august": 8,
    "september": 9,
    "october": 10,
    "november": 11,
    "december": 12,
    "jan": 1,
    "feb": 2,
    "mar": 3,
    "apr": 4,
    "jun": 6,
    "jul": 7,
    "aug": 8,
    "sep": 9,
    "sept": 9,
    "oct": 10,
    "nov": 11,
    "dec": 12,
    # German
    "januar": 1,
    "jänner": 1,
    "februar": 2,
    "märz": 3,
    "maerz": 3,
    "mai": 5,
    "juni": 6,
    "juli": 7,
    "oktober": 10,
    "dezember": 12,
    # French
    "janvier": 1,
    "février": 2,
    "fevrier": 2,
    "mars": 3,
    "avril": 4,
    "juin": 6,
    "juillet": 7,
    "août": 8,
    "aout": 8,
    "septembre": 9,
    "octobre": 10,
    "novembre": 11,
    "décembre": 12,
    "decembre": 12,
    # Spanish
    "enero": 1,
    "febrero": 2,
    "marzo": 3,
    "abril": 4,
    "mayo": 5,
    "junio": 6,
    "julio": 7,
    "agosto": 8,
    "septiembre": 9,
    "setiembre": 9,
    "octubre": 10,
    "noviembre": 11,
    "diciembre": 12,
}
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_SLASH = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{2,4})\b")


def _slash_order(text: str, today: date) -> tuple[str, str, str]:
    """Which way the text writes a/b/yyyy. Day first unless the text says otherwise: a first
    number over 12 is a day, a second one over 12 is a day; a date that is today only when
    read month first (Lotus Notes' "sent on 1/5/2026") shows an American writer."""
    month_first = day_first = False
    for a, b, y in _SLASH.findall(text):
        first, second = int(a), int(b)
        if first > 12:
            day_first = True
        elif second > 12:
            month_first = True
        else:
            year = int(y) + (2000 if int(y) < 100 else 0)
            with contextlib.suppress(ValueError):
                if date(year, first, second) == today and date(year, second, first) != today:
                    month_first = True
    return ("m", "d", "y") if month_first and not day_first else ("d", "m", "y")


_DATE_PATTERNS = [
    # 2026-01-12
    (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"), ("y", "m", "d")),
    # 12.01.2026 / 12.1.26 (day first, as written in German, French, Spanish)
    (re.compile(r"\b(\d{1,2})\.(\d{1,2})\.(\d{2,4})?(?!\d)"), ("d", "m", "y")),
    # 14/01/2026 (day first, as in French, Spanish, British English), or 01/14/2026 (month
    # first, as in American English): see _slash_order
    (_SLASH, ("d", "m", "y")),
    # 12 January 2026, 12. Januar, 12 janvier, 12 de enero de 2026
    (
        re.compile(
            rf"\b(\d{{1,2}})(?:st|nd|rd|th|er|\.)?\s+(?:(?:de|of)\s+)?({_MONTH})\b\.?"
            rf"(?:,?\s+(?:de\s+)?(\d{{4}}))?",
            re.IGNORECASE,
        ),
        ("d", "M", "y"),
    ),
    # January 12, 2026 / January 12th
    (
        re.compile(
            rf"\b({_MONTH})\b\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(\d{{4}}))?", re.IGNORECASE
        ),
        ("M", "d", "y"),
    ),
]


def find_return_date(text: str, *, today: date, horizon_days: int = 120) -> date | None:
    """The latest date after ``today`` (and within the horizon) written in an out-of-office
    text: "I'm away from 5 to 12 January" is back on the 12th. None when none is found."""
    found: list[date] = []
    for pattern, default in _DATE_PATTERNS:
        order = _slash_order(text, today) if pattern is _SLASH else default
        for match in pattern.finditer(text):
            parts = dict(zip(order, match.groups(), strict=True))
            try:
                month = _MONTHS[parts["M"].lower()] if parts.get("M") else int(parts["m"] or 0)
                day = int(parts["d"])
                if parts.get("y"):
                    year = int(parts["y"])
                    year += 2000 if year < 100 else 0
                    candidate = date(year, month, day)
                else:
                    candidate = date(today.year, month, day)
                    if candidate <= today:
                        candidate = date(today.year + 1, month, day)
            except (ValueError, KeyError):
                continue
            if today < candidate <= today + timedelta(days=horizon_days):
                found.append(candidate)
    return max(found) if found else None
