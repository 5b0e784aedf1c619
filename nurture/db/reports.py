"""Counts for `nurture status`, `nurture report` and /healthz: read-only aggregates over the
other tables, and one person's messages for `nurture person`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from nurture.db.funnel import flood_clicks
from nurture.db.models import ENROLLMENTS, EVENTS, MESSAGES
from nurture.vocabulary import EnrollmentStatus, EventKind, MessageStatus

__all__ = ["Skips", "StatusRow", "ReportStore"]

E = ENROLLMENTS.c
M = MESSAGES.c
V = EVENTS.c


@dataclass
class Skips:
    """A step's visits that sent nothing: answered before its email, skipped by ``when:``."""

    answered: int = 0
    when: dict[str, int] = field(default_factory=dict)  # per reason

    @property
    def skipped(self) -> int:
        return sum(self.when.values())


# The engine's reason for a step answered by an event reported before its email.
ANSWERED_EARLIER = "was reported before this step's email"


@dataclass(frozen=True)
class StatusRow:
    sequence_id: str
    step_id: str
    status: str
    exit_reason: str | None
    count: int


_COUNTED = [s.value for s in (*MessageStatus.open(), MessageStatus.sent)]


class ReportStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def capped_times(
        self, subscriber_ids: Sequence[int], *, since: datetime
    ) -> list[tuple[int, str, str, datetime]]:
        """(person, sequence, step, when it goes or went) of these people's emails sent,
        being sent or waiting since ``since``: what the per-person cap counts."""
        at = func.coalesce(M.sent_at, M.next_attempt_at)
        q = select(M.subscriber_id, M.sequence_id, M.step_id, at).where(
            M.subscriber_id.in_(subscriber_ids),
            M.status.in_(_COUNTED),
            at >= since,
        )
        return [(a, b, c, d) for a, b, c, d in self._conn.execute(q)]

    def waiting_counts(self) -> dict[str, int]:
        """Queued messages per reason they wait (window, cap, pace)."""
        q = (
            select(M.waiting, func.count())
            .where(M.status == MessageStatus.queued.value, M.waiting.is_not(None))
            .group_by(M.waiting)
        )
        return {str(w): int(n) for w, n in self._conn.execute(q)}

    def status_counts(self) -> list[StatusRow]:
        """Enrollments per sequence, step, status and exit reason."""
        keys = (E.sequence_id, E.step_id, E.status, E.exit_reason)
        q = select(*keys, func.count()).group_by(*keys)
        return [StatusRow(*r) for r in self._conn.execute(q)]

    def waiting_by_step(self) -> list[tuple[str, str, int]]:
        """(sequence, step, people) for every enrollment not finished."""
        keys = (E.sequence_id, E.step_id)
        q = (
            select(*keys, func.count())
            .where(E.status.in_([EnrollmentStatus.active.value, EnrollmentStatus.held.value]))
            .group_by(*keys)
        )
        return [(a, b, int(n)) for a, b, n in self._conn.execute(q)]

    def held_by_sequence(self) -> dict[str, int]:
        q = (
            select(E.sequence_id, func.count())
            .where(E.status == EnrollmentStatus.held.value)
            .group_by(E.sequence_id)
        )
        return {a: int(n) for a, n in self._conn.execute(q)}

    def messages_of(self, subscriber_id: int) -> list[Any]:
        """Every message row of one person, by enrollment and in the order decided."""
        q = (
            select(MESSAGES)
            .where(M.subscriber_id == subscriber_id)
            .order_by(M.enrollment_id, M.created_at, M.id)
        )
        return list(self._conn.execute(q))

    def skips_by_step(
        self, sequence_id: str, step_ids: list[str], since: datetime | None = None
    ) -> dict[str, Skips]:
        """Per step of one sequence, the visits that sent nothing, by why: answered by an
        outside event reported before the email (a yes), or skipped by the step's ``when:``
        (per reason). Both are stored as ``skipped`` events; the answered ones name their
        event (``answered_by``; before that was stored, their reason said it). An event's
        outcome holds 48 characters: a long step id is found by what is left of it."""
        reason = V.detail["reason"].as_string()
        answered_by = V.detail["answered_by"].as_string()
        q = (
            select(V.outcome, reason, answered_by.is_not(None), func.count())
            .join(ENROLLMENTS, E.id == V.enrollment_id)
            .where(V.kind == EventKind.skipped.value, E.sequence_id == sequence_id)
            .group_by(V.outcome, reason, answered_by.is_not(None))
        )
        if since is not None:
            q = q.where(V.created_at >= since)
        kept = {f"skipped:{step}"[:48]: step for step in step_ids}
        out: dict[str, Skips] = {}
        for outcome, why, answered, n in self._conn.execute(q):
            step = kept.get(str(outcome))
            if step is None:
                continue
            skips = out.setdefault(step, Skips())
            if answered or ANSWERED_EARLIER in str(why or ""):
                skips.answered += int(n)
            else:
                key = str(why or "no reason recorded")
                skips.when[key] = skips.when.get(key, 0) + int(n)
        return out

    def message_totals(self) -> list[tuple[str, str, str, str, int, int]]:
        """(sequence, step, kind, status, messages, of them retried) for /metrics."""
        keys = (M.sequence_id, M.step_id, M.kind, M.status)
        q = select(*keys, func.count(), func.count().filter(M.attempts > 1)).group_by(*keys)
        return [(a, b, c, d, int(n), int(r)) for a, b, c, d, n, r in self._conn.execute(q)]

    def yes_totals(self) -> dict[str, int]:
        q = select(M.yes_by, func.count()).where(M.yes_at.is_not(None)).group_by(M.yes_by)
        return {str(by): int(n) for by, n in self._conn.execute(q)}

    def due_enrollments(self, now: datetime) -> int:
        q = select(func.count()).where(E.status == EnrollmentStatus.active.value, E.due_at <= now)
        return int(self._conn.scalar(q) or 0)

    def sent_between(self, start: datetime, end: datetime) -> int:
        """Emails the relay took from ``start`` to ``end``: what a key signed in that time."""
        q = select(func.count()).where(M.sent_at >= start, M.sent_at <= end)
        return int(self._conn.scalar(q) or 0)

    def message_counts(self) -> dict[str, int]:
        q = select(M.status, func.count()).group_by(M.status)
        return {status: n for status, n in self._conn.execute(q)}

    def click_counts(self) -> list[tuple[str, str, str, int]]:
        """(sequence, step, verdict, clicks) of the clicks with a verdict, on the step's own
        email and its reminders; a flood's summary row counts the clicks it stands for."""
        keys = (M.sequence_id, M.step_id, V.verdict)
        q = (
            select(*keys, func.sum(flood_clicks()))
            .join(MESSAGES, M.id == V.message_id)
            .where(V.kind == EventKind.click.value, V.verdict.is_not(None))
            .group_by(*keys)
        )
        return [(a, b, str(c), int(n)) for a, b, c, n in self._conn.execute(q)]
