"""Send windows in the person's own time zone and the per-person cap, on a fixed clock: the
pure rules of ``nurture.sendtimes`` (the daemon's use of them is in
tests/integration/test_send_times.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from nurture.sendtimes import Caps, SendTimes, next_opening
from nurture.sequences import SendWindow

OFFICE = SendWindow(frozenset(range(5)), time(9), time(17, 30), timedelta(minutes=10))
AUCKLAND = ZoneInfo("Pacific/Auckland")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
TIMES = SendTimes()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(at: datetime, zone: ZoneInfo) -> datetime:
    return at.astimezone(zone)


def test_inside_the_window_an_email_goes_now() -> None:
    now = utc(2026, 1, 6, 20, 30)  # Wednesday 09:30 in Auckland (NZDT, UTC+13)
    assert TIMES.earliest(now, window=OFFICE, zone=AUCKLAND, capped=False) == (now, None)


def test_two_people_due_at_the_same_instant_go_at_their_own_nine() -> None:
    now = utc(2026, 1, 5, 9, 0)  # Monday: 22:00 in Auckland, 01:00 in Los Angeles
    nz, why = TIMES.earliest(now, window=OFFICE, zone=AUCKLAND, capped=False, key=1)
    la, _ = TIMES.earliest(now, window=OFFICE, zone=LOS_ANGELES, capped=False, key=1)
    assert why == "window"
    for at, zone, day in ((nz, AUCKLAND, 6), (la, LOS_ANGELES, 5)):
        seen = local(at, zone)
        assert (seen.day, seen.hour) == (day, 9) and seen.minute < 10
    assert la < nz  # Los Angeles' Monday 09:00 (17:00 UTC) comes before Auckland's Tuesday


@pytest.mark.parametrize(
    ("zone", "before", "after_offset"),
    [
        # Auckland leaves daylight time on Sunday 2026-04-05 (UTC+13 -> UTC+12).
        (AUCKLAND, utc(2026, 4, 3, 5, 0), timedelta(hours=12)),
        # Los Angeles enters it on Sunday 2026-03-08 (UTC-8 -> UTC-7).
        (LOS_ANGELES, utc(2026, 3, 7, 2, 0), timedelta(hours=-7)),
    ],
)
def test_a_daylight_saving_change_keeps_nine_local(
    zone: ZoneInfo, before: datetime, after_offset: timedelta
) -> None:
    # Due on Friday evening local time: the window next opens on Monday, after the change.
    at, why = TIMES.earliest(before, window=OFFICE, zone=zone, capped=False, key=7)
    seen = local(at, zone)
    assert why == "window"
    assert seen.weekday() == 0 and seen.hour == 9 and seen.minute < 10
    assert seen.utcoffset() == after_offset


def test_a_window_that_skips_a_day_of_the_change() -> None:
    # A Sunday-only window on the very day Auckland's clocks go back: 09:00 exists once.
    sunday = SendWindow(frozenset({6}), time(9), time(10), timedelta(0))
    opens, closes = next_opening(sunday, utc(2026, 4, 3, 0, 0), AUCKLAND)
    assert local(opens, AUCKLAND).replace(tzinfo=None) == datetime(2026, 4, 5, 9, 0)
    assert closes - opens == timedelta(hours=1)


def test_the_spread_stays_within_the_first_minutes_and_is_fixed_per_message() -> None:
    now = utc(2026, 1, 5, 9, 0)
    spots = {
        TIMES.earliest(now, window=OFFICE, zone=LOS_ANGELES, capped=False, key=k)[0]
        for k in range(200)
    }
    opening = utc(2026, 1, 5, 17, 0)
    assert min(spots) >= opening and max(spots) < opening + timedelta(minutes=10)
    assert len(spots) > 50  # spread out, not all at 09:00:00
    again = TIMES.earliest(now, window=OFFICE, zone=LOS_ANGELES, capped=False, key=3)
    assert again == TIMES.earliest(now, window=OFFICE, zone=LOS_ANGELES, capped=False, key=3)


def test_a_short_window_keeps_the_spread_inside_it() -> None:
    short = SendWindow(frozenset(range(7)), time(9), time(9, 4), timedelta(hours=1))
    for key in range(50):
        at, _ = TIMES.earliest(
            utc(2026, 1, 5, 0, 0), window=short, zone=ZoneInfo("UTC"), capped=False, key=key
        )
        assert utc(2026, 1, 5, 9, 0) <= at < utc(2026, 1, 5, 9, 4)


def test_the_cap_per_day_moves_an_email_to_the_next_local_day() -> None:
    capped = SendTimes(caps=Caps(per_day=2))
    now = utc(2026, 1, 5, 20, 0)  # Monday, 12:00 in Los Angeles
    taken = [utc(2026, 1, 5, 16, 0), utc(2026, 1, 5, 19, 0)]  # two today (08:00, 11:00 LA)
    at, why = capped.earliest(now, window=None, zone=LOS_ANGELES, capped=True, taken=taken)
    seen = local(at, LOS_ANGELES)
    assert why == "cap" and (seen.day, seen.hour) == (6, 0) and seen.minute < 10
    # One of them was yesterday in Los Angeles (23:00 on Sunday): room today.
    taken = [utc(2026, 1, 5, 7, 0), utc(2026, 1, 5, 19, 0)]
    assert capped.earliest(now, window=None, zone=LOS_ANGELES, capped=True, taken=taken) == (
        now,
        None,
    )
    # A confirmation is not capped.
    assert capped.earliest(now, window=None, zone=LOS_ANGELES, capped=False, taken=taken * 5) == (
        now,
        None,
    )


def test_cap_and_window_together_find_a_time_both_allow() -> None:
    capped = SendTimes(caps=Caps(per_day=1))
    friday_noon = utc(2026, 1, 9, 20, 0)  # Friday 12:00 in Los Angeles, one sent today
    at, why = capped.earliest(
        friday_noon, window=OFFICE, zone=LOS_ANGELES, capped=True, taken=[utc(2026, 1, 9, 17, 5)]
    )
    seen = local(at, LOS_ANGELES)
    # Not Saturday 00:00 (the cap lifts, the window is shut): Monday 09:00.
    assert why == "cap" and seen.weekday() == 0 and seen.hour == 9


def test_the_cap_per_week_counts_the_local_week_from_monday() -> None:
    capped = SendTimes(caps=Caps(per_week=3))
    wednesday = utc(2026, 1, 7, 12, 0)
    taken = [utc(2026, 1, 5, 12, 0), utc(2026, 1, 6, 12, 0), utc(2026, 1, 7, 9, 0)]
    at, why = capped.earliest(
        wednesday, window=None, zone=ZoneInfo("UTC"), capped=True, taken=taken
    )
    assert why == "cap" and utc(2026, 1, 12) <= at < utc(2026, 1, 12, 0, 10)
    last_week = [t - timedelta(days=7) for t in taken]
    assert (
        capped.earliest(wednesday, window=None, zone=ZoneInfo("UTC"), capped=True, taken=last_week)[
            1
        ]
        is None
    )


def test_a_bad_time_zone_falls_back_to_the_default_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    times = SendTimes(default_zone="Europe/Paris")
    with caplog.at_level(logging.WARNING, logger="nurture.sendtimes"):
        for _ in range(3):
            assert times.zone_of(42, {"timezone": "Mars/Olympus"}) == ZoneInfo("Europe/Paris")
        assert times.zone_of(43, {"timezone": "../../etc/passwd"}) == ZoneInfo("Europe/Paris")
    assert times.zone_of(42, {"timezone": "Asia/Tokyo"}) == ZoneInfo("Asia/Tokyo")
    assert times.zone_of(44, {}) == ZoneInfo("Europe/Paris")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "Mars/Olympus" in said[0] and "Europe/Paris" in said[0]
