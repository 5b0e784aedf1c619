"""The funnel's aggregates for ``nurture report``: per step of one sequence, how many reached
it, got its email, said yes (how, how fast, after a reminder or not), clicked as people or as
machines; per sequence, how many converted and how fast. A few grouped queries per sequence
(and two ordered ones per step and variant for the percentiles), whatever the number of
people: the indexes on (sequence, step) of messages and enrollments carry them.

What each figure counts is the label's word: emails (a step's own email, its reminders
apart), visits of a step (an enrollment's pass through it), people (distinct enrollments),
clicks (each click, a flood's clicks one by one)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, func, select

from nurture.db.answers import StepTally
from nurture.db.models import ENROLLMENTS, EVENTS, MESSAGES
from nurture.vocabulary import EnrollmentStatus, EventKind, ExitReason, MessageKind, Phase

__all__ = ["StepFunnel", "FunnelStore", "flood_clicks"]

M = MESSAGES.c
E = ENROLLMENTS.c
V = EVENTS.c
STEP = str(MessageKind.STEP)
FLOOD = "flood"  # the outcome of a flood's summary row (nurture.tracking)


def flood_clicks() -> ColumnElement[Any]:
    """How many clicks a click event row stands for: a flood's summary row its
    ``detail.clicks``, any other row one."""
    return case((V.outcome == FLOOD, func.coalesce(V.detail["clicks"].as_integer(), 1)), else_=1)


@dataclass
class StepFunnel:
    decided: int = 0  # step emails decided on (each visit of the step once)
    revisits: int = 0  # of those, visits after the first (a goto back, a re-entry)
    sent: int = 0  # step emails sent (its reminders are not: ``reminded``)
    yes: int = 0  # of those, the ones whose visit got its yes
    by: dict[str, int] = field(default_factory=dict)
    # Step emails whose yes came before they went (an event the step asks for, while the
    # email waited for its send window): answered, never sent.
    answered_unsent: int = 0
    reminded: int = 0  # reminders sent
    after_reminder: int = 0
    human_clickers: int = 0  # distinct people with a click judged human on any of its emails
    bot_clicks: int = 0  # clicks judged machines on its emails (a flood's each counted)
    bot_reasons: list[tuple[str, int]] = field(default_factory=list)
    median_seconds: float | None = None
    p90_seconds: float | None = None
    timed: int = 0  # yeses whose time from the email's delivery is known
    # Per A/B variant: (yeses timed, median, p90).
    variant_times: dict[str, tuple[int, float | None, float | None]] = field(default_factory=dict)


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
        long after delivery, after a reminder or not, its machine clicks): per sequence and
        step the funnel, and per variant the tallies of A/B tests and answers. One pass for
        all sequences: on SQLite a full scan beats millions of lookups through an index.
        Then the people who clicked (distinct enrollments) and the clicks of floods, one
        grouped query each."""
        went = M.sent_at.is_not(None)
        keys = (M.sequence_id, M.step_id, M.kind, M.variant, M.yes_by, M.answer)
        q = select(
            *keys,
            func.count(),
            func.count().filter(M.visit > 1),
            func.count().filter(went),
            func.count(M.yes_at).filter(went),
            func.count().filter(went, M.after_reminder.is_(True)),
            func.count(M.yes_at).filter(M.sent_at.is_(None)),
            func.coalesce(func.sum(M.bot_clicks), 0),
            func.count(M.yes_seconds).filter(went),
        ).group_by(*keys)
        if since is not None:
            q = q.where(M.created_at >= since)
        out: dict[str, dict[str, StepFunnel]] = {}
        tallies: dict[tuple[str, str, str | None], StepTally] = {}
        timed: dict[tuple[str, str, str], int] = {}
        for row in self._conn.execute(q):
            seq, step, kind, variant, by, answer = row[:6]
            n, revisits, sent, yes, late, unsent, bots, seconds = row[6:]
            f = out.setdefault(seq, {}).setdefault(step, StepFunnel())
            f.bot_clicks += int(bots)
            if kind != STEP:
                f.reminded += sent
                continue
            f.decided += n
            f.revisits += revisits
            f.sent += sent
            f.yes += yes
            f.answered_unsent += unsent
            f.after_reminder += late
            f.timed += seconds
            if variant is not None and seconds:
                timed[(seq, step, variant)] = timed.get((seq, step, variant), 0) + seconds
            if by is not None and yes:
                f.by[by] = f.by.get(by, 0) + yes
            t = tallies.setdefault((seq, step, variant), StepTally(seq, step, variant))
            t.sent += sent
            t.yes += yes
            if answer is not None and yes:
                t.answers[answer] = t.answers.get(answer, 0) + yes
        for seq, step, people in self._clickers(since):
            out.setdefault(seq, {}).setdefault(step, StepFunnel()).human_clickers = people
        for seq, step, clicks in self._flooded(since):
            out.setdefault(seq, {}).setdefault(step, StepFunnel()).bot_clicks += clicks
        for seq, steps in out.items():
            for step, f in steps.items():
                f.median_seconds, f.p90_seconds = self._percentiles(seq, step, f.timed, since)
                if f.bot_clicks:
                    f.bot_reasons = self._bot_reasons(seq, step, since)
        for (seq, step, variant), n in timed.items():
            median, p90 = self._percentiles(seq, step, n, since, variant=variant)
            out[seq][step].variant_times[variant] = (n, median, p90)
        return out, list(tallies.values())

    def _clickers(self, since: datetime | None) -> list[tuple[str, str, int]]:
        """(sequence, step, people): the distinct enrollments with a click judged human on
        any email of the step (its own or a reminder; one person clicking both is one)."""
        q = (
            select(M.sequence_id, M.step_id, func.count(M.enrollment_id.distinct()))
            .where(M.clicked_at.is_not(None), *self._since(M.created_at, since))
            .group_by(M.sequence_id, M.step_id)
        )
        return [(a, b, int(n)) for a, b, n in self._conn.execute(q)]

    def _flooded(self, since: datetime | None) -> list[tuple[str, str, int]]:
        """(sequence, step, clicks) of the floods' summary rows: a link clicked past its limit
        is one event row for all those clicks, not counted on its email's ``bot_clicks``."""
        q = (
            select(M.sequence_id, M.step_id, func.sum(flood_clicks()))
            .select_from(EVENTS.join(MESSAGES, M.id == V.message_id))
            .where(
                V.kind == EventKind.click.value,
                V.outcome == FLOOD,
                *self._since(M.created_at, since),
            )
            .group_by(M.sequence_id, M.step_id)
        )
        return [(a, b, int(n or 0)) for a, b, n in self._conn.execute(q)]

    def _bot_reasons(
        self, sequence_id: str, step_id: str, since: datetime | None
    ) -> list[tuple[str, int]]:
        """The main reasons, from the latest thousand bot click rows of the step (a flood's
        row weighs its clicks)."""
        join = and_(M.id == V.message_id, M.sequence_id == sequence_id, M.step_id == step_id)
        recent = (
            select(V.outcome, V.detail)
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
        for outcome, detail in self._conn.execute(recent):
            d = detail or {}
            clicks = int(d.get("clicks") or 1) if outcome == FLOOD else 1
            for reason in d.get("reasons", [])[:3]:
                reasons[reason] += clicks
        return reasons.most_common(3)

    def _percentiles(
        self,
        sequence_id: str,
        step_id: str,
        count: int,
        since: datetime | None,
        *,
        variant: str | None = None,
    ) -> tuple[float | None, float | None]:
        """Median and 90th percentile (both nearest rank: a time some yes took) of the
        seconds from a step email's delivery to its yes, of one step or one of its variants:
        ``yes_seconds``, written with the yes: its time (``yes_at``, when the person made it:
        a click's time, not its judgement's) less the email's ``sent_at`` (accepted by the
        relay; not ``created_at``, when it was decided, which a send window or the cap may
        put hours before). Read along the index on (sequence, step, yes_seconds)."""
        if count == 0:
            return None, None
        base = (
            select(M.yes_seconds)
            .where(
                M.sequence_id == sequence_id,
                M.step_id == step_id,
                M.yes_seconds.is_not(None),  # set only on an email delivered before its yes
                *([M.variant == variant] if variant is not None else []),
                *self._since(M.created_at, since),
            )
            .order_by(M.yes_seconds)
            .limit(1)
        )
        median = self._conn.scalar(base.offset((count - 1) // 2))
        p90 = self._conn.scalar(base.offset(max(0, -(-count * 9 // 10) - 1)))
        return (
            None if median is None else round(float(median), 1),
            None if p90 is None else round(float(p90), 1),
        )

    def entering(self, sequence_id: str, since: datetime | None = None) -> dict[str, int]:
        """Enrollments at each step whose email was never decided: its delay runs, they are
        held for a confirmation, or they left there before it (a goal, an unsubscribe): they
        reached the step too. (One who completed there skipped it: its skip is counted.)"""
        unfinished = [EnrollmentStatus.active.value, EnrollmentStatus.held.value]
        left = E.status == EnrollmentStatus.exited.value
        if since is not None:
            left = and_(left, E.updated_at >= since)
        q = (
            select(E.step_id, func.count())
            .where(
                E.sequence_id == sequence_id,
                E.phase == Phase.send.value,
                E.status.in_(unfinished) | left,
            )
            .group_by(E.step_id)
        )
        return {step: int(n) for step, n in self._conn.execute(q)}

    def converted_unmarked(
        self, sequence_id: str, since: datetime | None = None
    ) -> dict[tuple[str, str | None, str], int]:
        """People converted by a goal event while waiting at a step whose email went and got
        no yes: by (step, variant, event name). Before nurture marked the yes of a step whose
        ask is the goal event itself, that conversion left the step's yes unmarked; the
        report counts it as the step's yes when the step asks for that event."""
        name = V.detail["event"].as_string()
        q = (
            select(E.step_id, M.variant, name, func.count(E.id.distinct()))
            .select_from(
                EVENTS.join(ENROLLMENTS, E.id == V.enrollment_id).join(
                    MESSAGES,
                    and_(M.enrollment_id == E.id, M.visit == E.visit, M.kind == STEP),
                )
            )
            .where(
                V.kind == EventKind.goal.value,
                E.sequence_id == sequence_id,
                E.status == EnrollmentStatus.exited.value,
                E.exit_reason == ExitReason.converted.value,
                E.phase == Phase.wait.value,
                M.sent_at.is_not(None),
                M.yes_at.is_(None),
                *self._since(M.created_at, since),
            )
            .group_by(E.step_id, M.variant, name)
        )
        return {(step, variant, str(n)): int(c) for step, variant, n, c in self._conn.execute(q)}

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
        took = seconds_between(self._conn, E.updated_at, E.created_at)  # it left: its last write
        q = select(took).where(*here, converted).order_by(took).limit(1).offset((n - 1) // 2)
        median = self._conn.scalar(q)
        return int(enrolled), int(n), None if median is None else round(float(median), 1)
