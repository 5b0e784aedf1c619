"""The answers on each step's own email: the micro-yes it got (when, how, which answer), the
A/B variant it was, and the verdicts of A/B tests once one picked its winner."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from nurture.db.models import CONTROL, MESSAGES
from nurture.vocabulary import MessageKind, YesBy

__all__ = ["StepTally", "AnswerStore"]

M = MESSAGES.c
C = CONTROL.c
STEP = str(MessageKind.STEP)


@dataclass
class StepTally:
    """Per sequence, step and variant: step emails sent, the yeses they got, and by which
    answer."""

    sequence_id: str
    step_id: str
    variant: str | None
    sent: int = 0
    yes: int = 0
    answers: dict[str, int] = field(default_factory=dict)


def _winner_key(sequence_id: str, step_id: str) -> str:
    # control.name holds 32 characters; a sequence and a step id hold 64 each.
    return "ab:" + hashlib.sha256(f"{sequence_id}/{step_id}".encode()).hexdigest()[:29]


class AnswerStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def mark_yes(
        self,
        enrollment_id: int,
        visit: int,
        *,
        by: YesBy,
        answer: str | None,
        now: datetime,
    ) -> None:
        """The micro-yes to the step of ``visit``, on that step's own email (the first one
        only: a step says yes once per visit), with how long after its delivery it came and
        whether a reminder had gone out before."""
        emails = self._conn.execute(
            select(M.id, M.kind, M.sent_at, M.yes_at).where(
                M.enrollment_id == enrollment_id, M.visit == visit
            )
        ).all()
        step = next((e for e in emails if e.kind == STEP and e.yes_at is None), None)
        if step is None:
            return
        reminded = any(e.kind != STEP and e.sent_at is not None for e in emails)
        took = None if step.sent_at is None else max(0, int((now - step.sent_at).total_seconds()))
        self._conn.execute(
            update(MESSAGES)
            .where(M.id == step.id)
            .values(
                yes_at=now,
                yes_by=by.value,
                answer=answer,
                yes_seconds=took,
                after_reminder=reminded,
            )
        )

    def clicked(self, message_id: int, *, human: bool, now: datetime, count: int = 1) -> None:
        """A click judged: the first human one is kept on its email, machines are counted
        (``count`` of them at once)."""
        if human:
            q = update(MESSAGES).where(M.id == message_id, M.clicked_at.is_(None))
            self._conn.execute(q.values(clicked_at=now))
        else:
            q = update(MESSAGES).where(M.id == message_id)
            self._conn.execute(q.values(bot_clicks=M.bot_clicks + count))

    def variant_of(self, enrollment_id: int, visit: int) -> str | None:
        """The variant the step's own email of this visit was (its reminders are the same)."""
        q = select(M.variant).where(
            M.enrollment_id == enrollment_id, M.visit == visit, M.kind == STEP
        )
        found: str | None = self._conn.scalar(q.limit(1))
        return found

    def tallies(self, sequence_id: str, step_id: str) -> list[StepTally]:
        """Sent and yes per variant of one step (an A/B test's one look): one aggregate query
        along the index on sequence and step. ``nurture report`` reads every step at once
        instead (``FunnelStore.scan``)."""
        went = M.sent_at.is_not(None)
        q = (
            select(M.variant, func.count().filter(went), func.count(M.yes_at).filter(went))
            .where(M.sequence_id == sequence_id, M.step_id == step_id, M.kind == STEP)
            .group_by(M.variant)
        )
        return [
            StepTally(sequence_id, step_id, variant, int(sent), int(yes))
            for variant, sent, yes in self._conn.execute(q)
        ]

    def yes_times(self, sequence_id: str, step_id: str) -> dict[str | None, list[float]]:
        """Seconds from each step email's delivery to its yes, per variant (an A/B step's
        report; one row per yes of that step)."""
        q = select(M.variant, M.yes_seconds).where(
            M.sequence_id == sequence_id, M.step_id == step_id, M.yes_seconds.is_not(None)
        )
        out: dict[str | None, list[float]] = {}
        for variant, seconds in self._conn.execute(q):
            out.setdefault(variant, []).append(float(seconds))
        return out

    def first_sent(self, sequence_id: str, step_id: str) -> datetime | None:
        q = select(func.min(M.sent_at)).where(
            and_(M.sequence_id == sequence_id, M.step_id == step_id, M.kind == STEP)
        )
        found: datetime | None = self._conn.scalar(q)
        return found

    def winner(self, sequence_id: str, step_id: str) -> dict[str, Any] | None:
        """The A/B test's verdict once its step picked a winner: {variant, at, why}."""
        q = select(C.value).where(C.name == _winner_key(sequence_id, step_id))
        found: dict[str, Any] | None = self._conn.scalar(q)
        return found

    def set_winner(
        self, sequence_id: str, step_id: str, variant: str | None, *, why: str, now: datetime
    ) -> bool:
        """Record the verdict of the test's one look (``variant`` None: no winner, the
        variants go on being split); False if another worker recorded one first (theirs
        stands)."""
        value = {
            "sequence": sequence_id,
            "step": step_id,
            "variant": variant,
            "at": now.isoformat(),
            "why": why,
        }
        row = {"name": _winner_key(sequence_id, step_id), "value": value, "updated_at": now}
        try:
            with self._conn.begin_nested():
                self._conn.execute(insert(CONTROL).values(row))
        except IntegrityError:
            return False
        return True
