"""When an email decided on may go out: the step's send window in the person's own time zone,
and the cap on emails per person per day and week. The rules are pure functions of ``now``
(no clock, no I/O), so a test can run a year of daylight-saving changes in a millisecond;
``SendTimes.later`` reads what they need (the people's zones, their emails of the week)
through the journey's transaction.

An email that may not go now gets the earliest time it may: the next opening of its window,
or the next local day (week) with room under the cap, whichever comes later, found by
stepping from one to the other until both agree. It then goes within the first minutes of
that opening (``SendWindow.spread``, at a place fixed by the message), so a whole list due
overnight does not hit the relay at 09:00:00 exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nurture.sequences import Catalog, SendWindow

if TYPE_CHECKING:
    from nurture.db.enrollments import EnrollmentRow
    from nurture.db.store import Tx
    from nurture.engine import SendEmail

__all__ = ["Caps", "SendTimes", "zone_named", "next_opening", "describe", "Waiting"]

log = logging.getLogger(__name__)

Waiting = str  # why a message waits: "window" or "cap" (and "pace", set by the dispatcher)
_CAP_SPREAD = timedelta(minutes=10)  # a cap that lifts at midnight, without a window
_LOGGED_MAX = 10_000  # people whose bad time zone was logged, remembered per process


def zone_named(name: object) -> ZoneInfo | None:
    """The IANA zone of that name, or None when it is not one."""
    if not isinstance(name, str) or not name or len(name) > 64 or name.startswith("/"):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


@dataclass(frozen=True)
class Caps:
    per_day: int | None = None
    per_week: int | None = None

    @property
    def any(self) -> bool:
        return self.per_day is not None or self.per_week is not None


def _local(day: date, at: time | None, zone: ZoneInfo) -> datetime:
    """``at`` on ``day`` in ``zone`` (None: the midnight ending it), as UTC. A time that a
    daylight-saving change skips is read as after the change (zoneinfo's fold=0)."""
    if at is None:
        day, at = day + timedelta(days=1), time(0)
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def next_opening(window: SendWindow, at: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """(opening, closing) of the window that ``at`` is in, or of the next one, in UTC."""
    today = at.astimezone(zone).date()
    for ahead in range(8):
        day = today + timedelta(days=ahead)
        if day.weekday() not in window.days:
            continue
        opens, closes = _local(day, window.start, zone), _local(day, window.end, zone)
        if at < closes:
            return max(opens, at), closes
    raise AssertionError("a window has at least one day")  # pragma: no cover


def describe(window: SendWindow) -> str:
    """``mon-fri 09:00-17:30``."""
    names = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    days = sorted(window.days)
    if days == list(range(days[0], days[-1] + 1)) and len(days) > 2:
        said = f"{names[days[0]]}-{names[days[-1]]}"
    else:
        said = ",".join(names[d] for d in days)
    end = window.end.strftime("%H:%M") if window.end else "24:00"
    return f"{said} {window.start:%H:%M}-{end}"


def _spot(key: int, room: timedelta) -> timedelta:
    """A place in the first ``room`` of an opening, the same for the same message."""
    if room <= timedelta(0):
        return timedelta(0)
    fraction = ((key * 2654435761) % 2**32) / 2**32
    return timedelta(seconds=int(room.total_seconds() * fraction))


class SendTimes:
    """Windows and caps for one deployment."""

    def __init__(self, *, default_zone: str = "UTC", caps: Caps | None = None) -> None:
        zone = zone_named(default_zone)
        assert zone is not None, default_zone
        self.default_zone = zone
        self.caps = caps or Caps()
        self._logged: set[int] = set()

    def zone_of(self, subscriber_id: int, fields: Mapping[str, object]) -> ZoneInfo:
        """The person's ``timezone`` field as a zone; a missing one is the default, a bad
        one too (logged once per person and process)."""
        name = fields.get("timezone")
        if name is None or name == "":
            return self.default_zone
        zone = zone_named(name)
        if zone is not None:
            return zone
        if subscriber_id not in self._logged and len(self._logged) < _LOGGED_MAX:
            self._logged.add(subscriber_id)
            log.warning(
                "subscriber %s: timezone %r is not an IANA time zone name; using %s",
                subscriber_id,
                name,
                self.default_zone.key,
                extra={"action": "timezone_unknown", "subscriber_id": subscriber_id},
            )
        return self.default_zone

    def earliest(
        self,
        now: datetime,
        *,
        window: SendWindow | None,
        zone: ZoneInfo,
        capped: bool,
        taken: Iterable[datetime] = (),
        key: int = 0,
    ) -> tuple[datetime, Waiting | None]:
        """When an email may go: ``now`` and None, or a later time and why it waits.
        ``taken``: when the person's other capped emails go (or went); ``capped``: whether
        this one counts (a confirmation does not)."""
        times = sorted(taken) if capped and self.caps.any else []
        at, why = now, None
        closes: datetime | None = None
        for _ in range(64):  # both rules agree within a few rounds; 64 is a safety net
            moved = False
            if window is not None:
                opens, closes = next_opening(window, at, zone)
                if opens > at:
                    at, why, moved = opens, why or "window", True
            full = self._full(at, zone, times)
            if full is not None:
                at, why, moved = full, "cap", True
            if not moved:
                break
        if why is None:
            return now, None
        room = window.spread if window is not None else _CAP_SPREAD
        if closes is not None:
            room = min(room, (closes - at) / 2)
        return at + _spot(key, room), why

    def later(
        self,
        tx: Tx,
        catalog: Catalog,
        sends: Sequence[tuple[EnrollmentRow, SendEmail]],
        *,
        now: datetime,
    ) -> list[tuple[datetime, Waiting] | None]:
        """For each email to send: None (it may go now), or when it may and why it waits
        (its send window in the person's time zone, the per-person cap). Costs nothing
        unless a step has a window or a cap is set."""
        out: list[tuple[datetime, Waiting] | None] = [None] * len(sends)
        asks = []
        for i, (row, send) in enumerate(sends):
            found = catalog.locate(row.sequence_id, send.step_id)
            if found is not None:
                window = found[0].window_for(found[1])
                capped = self.caps.any and not found[1].confirms
                if window is not None or capped:
                    asks.append((i, row, send, window, capped))
        if not asks:
            return out
        people = sorted({row.subscriber_id for _, row, *_ in asks})
        capping = any(capped for *_, capped in asks)
        # No lock on the people: it would be taken after their enrollments by some paths and
        # before by others (a deadlock on PostgreSQL). Two workers deciding for one person at
        # the same instant may therefore each send one email past the cap.
        fields = tx.subscribers.fields_of(people)
        taken: dict[int, list[datetime]] = {p: [] for p in people}
        if capping:
            for person, seq_id, step_id, at in tx.reports.capped_times(
                people, since=now - timedelta(days=8)
            ):
                found = catalog.locate(seq_id, step_id)
                if found is None or not found[1].confirms:
                    taken[person].append(at)
        for i, row, send, window, capped in asks:
            at, why = self.earliest(
                now,
                window=window,
                zone=self.zone_of(row.subscriber_id, fields.get(row.subscriber_id, {})),
                capped=capped,
                taken=taken[row.subscriber_id],
                key=row.id * 1009 + send.visit * 31 + send.kind.reminder,
            )
            if capped:
                taken[row.subscriber_id].append(at)
            if why is not None:
                out[i] = (at, why)
        return out

    def _full(self, at: datetime, zone: ZoneInfo, times: list[datetime]) -> datetime | None:
        """When the local day (or week) of ``at`` is full: the start of the next one."""
        if not times:
            return None
        day = at.astimezone(zone).date()
        if self.caps.per_day is not None:
            start, end = _local(day, time(0), zone), _local(day, None, zone)
            if sum(start <= t < end for t in times) >= self.caps.per_day:
                return end
        if self.caps.per_week is not None:
            monday = day - timedelta(days=day.weekday())
            start = _local(monday, time(0), zone)
            end = _local(monday + timedelta(days=7), time(0), zone)
            if sum(start <= t < end for t in times) >= self.caps.per_week:
                return end
        return None
