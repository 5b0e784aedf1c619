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

from nurture.db.answers import StepTally
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
    timed: int = 0  # yeses whose time from delivery is known


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

    def scan(
        self, since: datetime | None = None
    ) -> tuple[dict[str, dict[str, StepFunnel]], list[StepTally]]:
        """One grouped pass over every message (the counters each email keeps: its yes, how
        long after delivery, after a reminder or not, its clicks): per sequence and step the
        funnel, and per variant the tallies of A/B tests and answers. One pass for all
        sequences: on SQLite a full scan beats millions of lookups through an index."""
        went = M.sent_at.is_not(None)
        keys = (M.sequence_id, M.step_id, M.kind, M.variant, M.yes_by, M.answer)
        q = select(
            *keys,
            func.count(),
            func.count().filter(M.visit > 1),
            func.count().filter(went),
            func.count(M.yes_at).filter(went),
            func.count().filter(went, M.after_reminder.is_(True)),
            func.count(M.clicked_at),
            func.coalesce(func.sum(M.bot_clicks), 0),
            func.count(M.yes_seconds).filter(went),
        ).group_by(*keys)
        if since is not None:
            q = q.where(M.created_at >= since)
        out: dict[str, dict[str, StepFunnel]] = {}
        tallies: dict[tuple[str, str, str | None], StepTally] = {}
        for row in self._conn.execute(q):
            seq, step, kind, variant, by, answer = row[:6]
            n, revisits, sent, yes, late, clicked, bots, seconds = row[6:]
            f = out.setdefault(seq, {}).setdefault(step, StepFunnel())
            f.human_clickers += clicked
            f.bot_clicks += int(bots)
            if kind != STEP:
                f.reminded += sent
                continue
            f.decided += n
            f.revisits += revisits
            f.sent += sent
            f.yes += yes
            f.after_reminder += late
            f.timed += seconds
            if by is not None and yes:
                f.by[by] = f.by.get(by, 0) + yes
            t = tallies.setdefault((seq, step, variant), StepTally(seq, step, variant))
            t.sent += sent
            t.yes += yes
            if answer is not None and yes:
                t.answers[answer] = t.answers.get(answer, 0) + yes
        for seq, steps in out.items():
            for step, f in steps.items():
                f.median_seconds, f.p90_seconds = self._percentiles(seq, step, f.timed, since)
                if f.bot_clicks:
                    f.bot_reasons = self._bot_reasons(seq, step, since)
        return out, list(tallies.values())

    def _bot_reasons(
        self, sequence_id: str, step_id: str, since: datetime | None
    ) -> list[tuple[str, int]]:
        """The main reasons, from the latest thousand bot clicks of the step."""
        join = and_(M.id == V.message_id, M.sequence_id == sequence_id, M.step_id == step_id)
        recent = (
            select(V.detail)
            .select_from(EVENTS.join(MESSAGES, join))
            .where(
                V.kind == EventKind.click.value,
                V.verdict == "bot",
                *self._since(V.created_at, since),
            )
            .order_by(V.id.desc())
            .limit(1000)
        )
        reasons: Counter[str] = Counter()
        for detail in self._conn.scalars(recent):
            reasons.update((detail or {}).get("reasons", [])[:3])
        return reasons.most_common(3)

    def _percentiles(
        self, sequence_id: str, step_id: str, count: int, since: datetime | None
    ) -> tuple[float | None, float | None]:
        """Median and 90th percentile (nearest rank) of the seconds from a step email's
        delivery to its yes, read along the index on (sequence, step, yes_seconds)."""
        if count == 0:
            return None, None
        base = (
            select(M.yes_seconds)
            .where(
                M.sequence_id == sequence_id,
                M.step_id == step_id,
                M.yes_seconds.is_not(None),  # set only on an email delivered before its yes
                *self._since(M.created_at, since),
            )
            .order_by(M.yes_seconds)
            .limit(1)
        )
        median = self._conn.scalar(base.offset((count - 1) // 2))
        p90 = self._conn.scalar(base.offset(max(0, -(-count * 9 // 10) - 1)))
        return (
            None if median is None else float(median),
            None if p90 is None else float(p90),
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
