"""The events table: what subscribers did or what happened to their mail, and the clicks
waiting for their verdict."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from nurture.db.dialect import claim, insert_new, lock
from nurture.db.models import EVENTS, MESSAGES
from nurture.vocabulary import EventKind, Verdict

__all__ = ["PendingClick", "EventRow", "EventStore", "events_row"]

V = EVENTS.c
M = MESSAGES.c


@dataclass(frozen=True)
class PendingClick:
    id: int
    message_id: int
    at: datetime
    link: int
    detail: dict[str, Any]

    @property
    def reasons(self) -> list[str]:
        return list(self.detail.get("reasons", []))


@dataclass(frozen=True)
class EventRow:
    id: int
    subscriber_id: int
    enrollment_id: int | None
    message_id: int | None
    kind: EventKind
    outcome: str
    verdict: Verdict | None
    detail: dict[str, Any]
    at: datetime


def events_row(
    *,
    subscriber_id: int,
    kind: EventKind,
    outcome: str,
    now: datetime,
    enrollment_id: int | None = None,
    message_id: int | None = None,
    detail: dict[str, Any] | None = None,
    verdict: Verdict | None = None,
    evaluate_at: datetime | None = None,
    external_id: str | None = None,
) -> dict[str, Any]:
    """The row of one event, as ``EventStore.add`` and ``add_many`` write it."""
    return {
        "subscriber_id": subscriber_id,
        "enrollment_id": enrollment_id,
        "message_id": message_id,
        "kind": kind.value,
        "outcome": outcome[:48],
        "detail": detail or {},
        "verdict": verdict.value if verdict is not None else None,
        "evaluate_at": evaluate_at,
        "created_at": now,
        "external_id": external_id,
    }


class EventStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(
        self,
        *,
        subscriber_id: int,
        kind: EventKind,
        outcome: str,
        now: datetime,
        enrollment_id: int | None = None,
        message_id: int | None = None,
        detail: dict[str, Any] | None = None,
        verdict: Verdict | None = None,
        evaluate_at: datetime | None = None,
        external_id: str | None = None,
    ) -> int | None:
        """Record an event; its id. With ``external_id`` (an app's own id for it), None when
        an event with that id is recorded already: the same id twice is one event."""
        values = events_row(
            subscriber_id=subscriber_id,
            kind=kind,
            outcome=outcome,
            now=now,
            enrollment_id=enrollment_id,
            message_id=message_id,
            detail=detail,
            verdict=verdict,
            evaluate_at=evaluate_at,
            external_id=external_id,
        )
        if external_id is not None:
            return insert_new(self._conn, EVENTS, values)
        key = self._conn.execute(insert(EVENTS).values(values)).inserted_primary_key
        return int(key[0]) if key else None

    def add_many(self, rows: list[dict[str, Any]]) -> None:
        """Record events built by ``events_row``, in one statement."""
        if rows:
            self._conn.execute(insert(EVENTS), rows)

    def update_detail(self, subscriber_id: int, external_id: str, detail: dict[str, Any]) -> bool:
        """The detail of the person's event with that external id; False if there is none."""
        done = self._conn.execute(
            update(EVENTS)
            .where(V.subscriber_id == subscriber_id, V.external_id == external_id)
            .values(detail=detail)
        )
        return bool(done.rowcount)

    def set_outcome(self, event_id: int, outcome: str, detail: dict[str, Any]) -> None:
        self._conn.execute(
            update(EVENTS).where(V.id == event_id).values(outcome=outcome[:48], detail=detail)
        )

    def of_subscriber(self, subscriber_id: int, *, kind: EventKind | None = None) -> list[EventRow]:
        """A person's events, oldest first."""
        q = select(EVENTS).where(V.subscriber_id == subscriber_id)
        if kind is not None:
            q = q.where(V.kind == kind.value)
        return [
            EventRow(
                r.id,
                r.subscriber_id,
                r.enrollment_id,
                r.message_id,
                EventKind(r.kind),
                r.outcome,
                Verdict(r.verdict) if r.verdict else None,
                dict(r.detail or {}),
                r.created_at,
            )
            for r in self._conn.execute(q.order_by(V.id))
        ]

    def unanswered(
        self, subscriber_id: int, *, since: datetime | None, enrollment_id: int
    ) -> dict[str, list[int]]:
        """The outside events a person's app reported since then that answered no step of
        ``enrollment_id`` yet: their ids by name, oldest first. (Each event row keeps, in
        ``detail.answered``, the step it answered in each enrollment.)"""
        q = select(V.id, V.detail).where(
            V.subscriber_id == subscriber_id, V.kind == EventKind.event.value
        )
        if since is not None:
            q = q.where(V.created_at >= since)
        out: dict[str, list[int]] = {}
        mine = str(enrollment_id)
        for event_id, detail in self._conn.execute(q.order_by(V.id)):
            d = detail or {}
            if mine not in (d.get("answered") or {}):
                out.setdefault(str(d.get("event")), []).append(int(event_id))
        return out

    def mark_answered(self, event_id: int, *, enrollment_id: int, step_id: str) -> None:
        """The outside event ``event_id`` answered ``step_id`` of that enrollment: it answers
        no other step of it."""
        # Locked: two workers deciding two of the person's enrollments must not each write
        # back a detail that lacks the other's answer.
        detail = dict(self._conn.scalar(lock(select(V.detail).where(V.id == event_id))) or {})
        detail["answered"] = {**(detail.get("answered") or {}), str(enrollment_id): step_id}
        self._conn.execute(update(EVENTS).where(V.id == event_id).values(detail=detail))

    def pending_yeses(self, enrollment_ids: list[int]) -> dict[tuple[int, str, int], datetime]:
        """Clicks on a counting link not judged yet, for these enrollments: by (enrollment,
        step, visit) of the email clicked, when the last of them is due to be judged."""
        q = (
            select(V.enrollment_id, M.step_id, M.visit, V.evaluate_at, V.detail)
            .join(MESSAGES, M.id == V.message_id)
            .where(V.verdict == Verdict.pending.value, V.enrollment_id.in_(enrollment_ids))
        )
        out: dict[tuple[int, str, int], datetime] = {}
        for enrollment_id, step_id, visit, due, detail in self._conn.execute(q):
            if not (detail or {}).get("counts", True) or due is None:
                continue
            key = (int(enrollment_id), step_id, int(visit))
            out[key] = max(due, out.get(key, due))
        return out

    def pending_clicks(self, now: datetime, limit: int) -> list[PendingClick]:
        """Clicks whose burst window has closed, locked for deciding."""
        q = (
            select(V.id, V.message_id, V.created_at, V.detail)
            .where(V.verdict == Verdict.pending.value, V.evaluate_at <= now)
            .order_by(V.evaluate_at)
            .limit(limit)
        )
        return [
            PendingClick(
                r.id,
                int(r.message_id or 0),
                r.created_at,
                int((r.detail or {}).get("link", -1)),
                dict(r.detail or {}),
            )
            for r in self._conn.execute(claim(q, of=EVENTS))
        ]

    def clicks_between(
        self, message_id: int, start: datetime, end: datetime
    ) -> list[tuple[datetime, int, bool, str]]:
        """(when, link number, a flood's summary?, which client) of each click on a message
        between two times, any verdict, oldest first."""
        q = (
            select(V.created_at, V.detail, V.outcome)
            .where(
                V.message_id == message_id,
                V.kind == EventKind.click.value,
                V.created_at >= start,
                V.created_at <= end,
            )
            .order_by(V.created_at)
        )
        return [
            (
                at,
                int((d or {}).get("link", -1)),
                outcome == "flood",
                str((d or {}).get("client", "")),
            )
            for at, d, outcome in self._conn.execute(q)
        ]

    def postpone_click(self, event_id: int, *, until: datetime) -> None:
        """A pending click is judged at ``until`` instead."""
        self._conn.execute(update(EVENTS).where(V.id == event_id).values(evaluate_at=until))

    def decide_click(
        self, click: PendingClick, *, verdict: Verdict, outcome: str, reasons: list[str]
    ) -> None:
        self._conn.execute(
            update(EVENTS)
            .where(V.id == click.id)
            .values(
                verdict=verdict.value,
                outcome=outcome[:48],
                detail={**click.detail, "reasons": reasons},
                evaluate_at=None,
            )
        )
