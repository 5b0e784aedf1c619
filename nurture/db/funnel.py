"""The funnel's aggregates for ``nurture report``: per step of one sequence, how many reached
it, got its email, said yes (how, how fast, after a reminder or not), clicked as people or as
machines; per sequence, how many converted and how fast. A few grouped queries per sequence
(and two ordered ones per step for the percentiles), whatever the number of people: the
indexes on (sequence, step) of messages and enrollments carry them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, func, select
from sqlalchemy.orm import aliased

from nurture.db.models import ENROLLMENTS, EVENTS, MESSAGES
from nurture.vocabulary import EnrollmentStatus, EventKind, ExitReason, MessageKind, Phase

__all__ = ["StepFunnel", "FunnelStore"]

M = MESSAGES.c
E = ENROLLMENTS.c
V = EVENTS.c
STEP = str(MessageKind.STEP)


@dataclass
class StepFunnel:
    decided: int = 0  # step emails decided on (each visit of the step once)
    revisits: int = 0  # of those, visits after the first (a goto back, a re-entry)
    sent: int = 0
    yes: int = 0
    by: dict[str, int] = field(default_factory=dict)
    reminded: int = 0
    after_reminder: int = 0
    human_clickers: int = 0
    bot_clicks: int = 0
    bot_reasons: list[tuple[str, int]] = field(default_factory=list)
    median_seconds: float | None = None
    p90_seconds: float | None = None


def seconds_between(conn: Connection, later: Any, earlier: Any) -> ColumnElement[Any]:
    """``later - earlier`` in seconds, in this database's words."""
    if conn.dialect.name == "sqlite":
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return func.extract("epoch", later - earlier)


class FunnelStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def _since(self, column: Any, since: datetime | None) -> list[Any]:
        return [column >= since] if since is not None else []

    def steps(self, sequence_id: str, since: datetime | None = None) -> dict[str, StepFunnel]:
        out: dict[str, StepFunnel] = {}
        here = [M.sequence_id == sequence_id, *self._since(M.created_at, since)]
        q = (
            select(
                M.step_id,
                M.kind,
                M.yes_by,
                func.count(),
                func.count().filter(M.visit > 1),
                func.count().filter(M.sent_at.is_not(None)),
                func.count(M.yes_at).filter(M.sent_at.is_not(None)),  # on emails that went out
            )
            .where(*here)
            .group_by(M.step_id, M.kind, M.yes_by)
        )
        for step, kind, by, n, revisits, sent, yes in self._conn.execute(q):
            f = out.setdefault(step, StepFunnel())
            if kind != STEP:
                f.reminded += sent
                continue
            f.decided += n
            f.revisits += revisits
            f.sent += sent
            f.yes += yes
            if by is not None and yes:
                f.by[by] = f.by.get(by, 0) + yes
        reminder = aliased(MESSAGES)
        earlier = (
            select(reminder.c.id)
            .where(
                reminder.c.enrollment_id == M.enrollment_id,
                reminder.c.visit == M.visit,
                reminder.c.kind != STEP,
                reminder.c.sent_at.is_not(None),
                reminder.c.sent_at < M.yes_at,
            )
            .exists()
        )
        q2 = (
            select(M.step_id, func.count())
            .where(*here, M.kind == STEP, M.yes_at.is_not(None), M.sent_at.is_not(None), earlier)
            .group_by(M.step_id)
        )
        for step, n in self._conn.execute(q2):
            out.setdefault(step, StepFunnel()).after_reminder = n
        self._clicks(sequence_id, since, out)
        for step, f in out.items():
            f.median_seconds, f.p90_seconds = self._percentiles(sequence_id, step, f.yes, since)
        return out

    def _clicks(self, sequence_id: str, since: datetime | None, out: dict[str, StepFunnel]) -> None:
        join = and_(M.id == V.message_id, M.sequence_id == sequence_id)
        clicks = [V.kind == EventKind.click.value, *self._since(V.created_at, since)]
        q = (
            select(
                M.step_id,
                func.count(V.enrollment_id.distinct()).filter(V.verdict == "human"),
                func.count().filter(V.verdict == "bot"),
            )
            .select_from(EVENTS.join(MESSAGES, join))
            .where(*clicks)
            .group_by(M.step_id)
        )
        for step, humans, bots in self._conn.execute(q):
            f = out.setdefault(step, StepFunnel())
            f.human_clickers, f.bot_clicks = humans, bots
            if bots:
                # The main reasons, from the latest thousand bot clicks of the step.
                recent = (
                    select(V.detail)
                    .select_from(EVENTS.join(MESSAGES, join))
                    .where(*clicks, V.verdict == "bot", M.step_id == step)
                    .order_by(V.id.desc())
                    .limit(1000)
                )
                reasons: Counter[str] = Counter()
                for detail in self._conn.scalars(recent):
                    reasons.update((detail or {}).get("reasons", [])[:3])
                f.bot_reasons = reasons.most_common(3)

    def _percentiles(
        self, sequence_id: str, step_id: str, count: int, since: datetime | None
    ) -> tuple[float | None, float | None]:
        """Median and 90th percentile (nearest rank) of the seconds from a step email's
        delivery to its yes."""
        if count == 0:
            return None, None
        took = seconds_between(self._conn, M.yes_at, M.sent_at)
        base = (
            select(took)
            .where(
                M.sequence_id == sequence_id,
                M.step_id == step_id,
                M.kind == STEP,
                M.yes_at.is_not(None),
                M.sent_at.is_not(None),
                *self._since(M.created_at, since),
            )
            .order_by(took)
            .limit(1)
        )
        median = self._conn.scalar(base.offset((count - 1) // 2))
        p90 = self._conn.scalar(base.offset(max(0, -(-count * 9 // 10) - 1)))
        return (
            None if median is None else round(max(0.0, float(median)), 1),
            None if p90 is None else round(max(0.0, float(p90)), 1),
        )

    def entering(self, sequence_id: str) -> dict[str, int]:
        """Enrollments at each step whose email is not decided yet (its delay runs, or they
        are held for a confirmation): they reached the step too."""
        q = (
            select(E.step_id, func.count())
            .where(
                E.sequence_id == sequence_id,
                E.phase == Phase.send.value,
                E.status.in_([EnrollmentStatus.active.value, EnrollmentStatus.held.value]),
            )
            .group_by(E.step_id)
        )
        return {step: int(n) for step, n in self._conn.execute(q)}

    def conversions(
        self, sequence_id: str, since: datetime | None = None
    ) -> tuple[int, int, float | None]:
        """(enrolled, converted, median seconds from enrolling to converting)."""
        here = [E.sequence_id == sequence_id, *self._since(E.created_at, since)]
        converted = E.exit_reason == ExitReason.converted.value
        enrolled, n = self._conn.execute(
            select(func.count(), func.count().filter(converted)).where(*here)
        ).one()
        if not n:
            return int(enrolled), 0, None
        took = seconds_between(self._conn, E.updated_at, E.created_at)
        q = select(took).where(*here, converted).order_by(took).limit(1).offset((n - 1) // 2)
        median = self._conn.scalar(q)
        return int(enrolled), int(n), None if median is None else round(float(median), 1)
