"""The enrollments table: where each person stands in each sequence, and the claim of the
enrollments whose next thing is due (the tick's main query)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, bindparam, insert, select, update

from nurture.db.dialect import claim, insert_new, lock
from nurture.db.models import ENROLLMENTS, SUBSCRIBERS
from nurture.engine import EnrollmentState
from nurture.vocabulary import EnrollmentStatus, ExitReason, Phase, SubscriberStatus

__all__ = ["EnrollmentRow", "DueRow", "EnrollmentStore", "claim_due_query", "FRESH"]

E = ENROLLMENTS.c
S = SUBSCRIBERS.c


@dataclass(frozen=True)
class EnrollmentRow:
    id: int
    subscriber_id: int
    sequence_id: str
    state: EnrollmentState
    subscriber_status: SubscriberStatus
    updated_at: datetime | None = None  # for a finished one: when it finished
    created_at: datetime | None = None


@dataclass(frozen=True)
class DueRow:
    """An enrollment claimed because something fell due, with what sending to it needs."""

    enrollment: EnrollmentRow
    email: str
    fields: dict[str, Any]
    tags: tuple[str, ...] = ()


def _state(r: Any) -> EnrollmentState:
    return EnrollmentState(
        status=EnrollmentStatus(r.status),
        step_id=r.step_id,
        phase=Phase(r.phase),
        visit=r.visit,
        due_at=r.due_at,
        step_sent_at=r.step_sent_at,
        reminders_sent=r.reminders_sent,
        exit_reason=ExitReason(r.exit_reason) if r.exit_reason else None,
        done=tuple(r.done or ()),
    )


def _row(r: Any) -> EnrollmentRow:
    return EnrollmentRow(
        r.id,
        r.subscriber_id,
        r.sequence_id,
        _state(r),
        SubscriberStatus(r.subscriber_status),
        r.updated_at,
        r.created_at,
    )


def _values(state: EnrollmentState, now: datetime) -> dict[str, Any]:
    return {
        "status": state.status.value,
        "step_id": state.step_id,
        "phase": state.phase.value,
        "visit": state.visit,
        "due_at": state.due_at,
        "step_sent_at": state.step_sent_at,
        "reminders_sent": state.reminders_sent,
        "exit_reason": state.exit_reason.value if state.exit_reason else None,
        "done": list(state.done),
        "updated_at": now,
    }


_STATE_COLUMNS = (
    "status",
    "step_id",
    "phase",
    "visit",
    "due_at",
    "step_sent_at",
    "reminders_sent",
    "exit_reason",
    "done",
    "updated_at",
)
# engine.on_delivered, set-based: only an active enrollment waiting at that visit of that step
# whose email was not delivered yet starts the step's clock.
_START_CLOCK = (
    update(ENROLLMENTS)
    .where(
        E.id == bindparam("_id"),
        E.status == EnrollmentStatus.active.value,
        E.phase == Phase.wait.value,
        E.step_id == bindparam("_step"),
        E.visit == bindparam("_visit"),
        E.step_sent_at.is_(None),
    )
    .values(step_sent_at=bindparam("at"), due_at=bindparam("due"), updated_at=bindparam("at"))
)
_SAVE = (
    update(ENROLLMENTS)
    .where(E.id == bindparam("_id"))
    .values({c: bindparam(c) for c in _STATE_COLUMNS})
)


def _with_subscriber() -> Select[Any]:
    return select(*ENROLLMENTS.c, S.status.label("subscriber_status")).join(
        SUBSCRIBERS, S.id == E.subscriber_id
    )


# What fell due this recently (a person's yes, a form just sent) is claimed before an older
# backlog (a fresh import's confirmations, a relay's outage made up): a person who just acted
# never waits behind a bulk send.
FRESH = timedelta(seconds=3)


def claim_due_query(
    now: datetime, limit: int, *, since: datetime | None = None, skip: Sequence[int] = ()
) -> Select[Any]:
    """Active enrollments whose due_at has come, oldest first (with ``since``: only those due
    since then, newest first), with their subscriber's address and fields; each worker skips
    the rows another one holds, and this one those in ``skip``."""
    q = (
        select(
            *ENROLLMENTS.c,
            S.status.label("subscriber_status"),
            S.email,
            S.fields,
            S.tags,
        )
        .join(SUBSCRIBERS, S.id == E.subscriber_id)
        .where(E.status == EnrollmentStatus.active.value, E.due_at <= now)
    )
    if since is not None:
        q = q.where(E.due_at > since).order_by(E.due_at.desc(), E.id)
    else:
        q = q.order_by(E.due_at)
    if skip:
        q = q.where(E.id.not_in(skip))
    return claim(q.limit(limit), of=ENROLLMENTS)


class EnrollmentStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def of(self, subscriber_id: int, sequence_id: str) -> EnrollmentRow | None:
        q = _with_subscriber().where(E.subscriber_id == subscriber_id, E.sequence_id == sequence_id)
        row = self._conn.execute(q).first()
        return _row(row) if row else None

    def get(self, enrollment_id: int) -> EnrollmentRow:
        """One enrollment, locked: its state is about to be decided on and written."""
        return _row(self._conn.execute(lock(_with_subscriber().where(E.id == enrollment_id))).one())

    def get_many(self, enrollment_ids: Sequence[int]) -> dict[int, EnrollmentRow]:
        """Enrollments by id, locked (in id order, so two of these never deadlock)."""
        if not enrollment_ids:
            return {}
        q = _with_subscriber().where(E.id.in_(sorted(set(enrollment_ids)))).order_by(E.id)
        return {r.id: _row(r) for r in self._conn.execute(lock(q))}

    def of_subscriber(self, subscriber_id: int, *, locked: bool = True) -> list[EnrollmentRow]:
        """Every enrollment of a person, oldest first; locked unless ``locked=False`` (a read
        that must not take locks out of the usual order)."""
        q = _with_subscriber().where(E.subscriber_id == subscriber_id).order_by(E.id)
        return [_row(r) for r in self._conn.execute(lock(q) if locked else q)]

    def at_step(self, sequence_id: str, step_id: str) -> list[EnrollmentRow]:
        """The unfinished enrollments at one step of one sequence, locked."""
        q = _with_subscriber().where(
            E.sequence_id == sequence_id,
            E.step_id == step_id,
            E.status.in_([s.value for s in EnrollmentStatus if not s.finished]),
        )
        return [_row(r) for r in self._conn.execute(lock(q.order_by(E.id)))]

    def create(
        self, subscriber_id: int, sequence_id: str, state: EnrollmentState, *, now: datetime
    ) -> int | None:
        """Insert an enrollment; None if the subscriber is already in that sequence."""
        values = {
            "subscriber_id": subscriber_id,
            "sequence_id": sequence_id,
            "created_at": now,
            **_values(state, now),
        }
        return insert_new(self._conn, ENROLLMENTS, values)

    def create_many(
        self, rows: Sequence[tuple[int, str, EnrollmentState]], *, now: datetime
    ) -> None:
        """New enrollments (subscriber, sequence, state) in one statement; IntegrityError if
        one is there already (the caller's savepoint)."""
        if rows:
            self._conn.execute(
                insert(ENROLLMENTS),
                [
                    {"subscriber_id": s, "sequence_id": q, "created_at": now, **_values(st, now)}
                    for s, q, st in rows
                ],
            )

    def save(self, states: Sequence[tuple[int, EnrollmentState]], *, now: datetime) -> None:
        """Write new states, the rows already locked by this transaction: one ``UPDATE ...
        WHERE id IN`` per group of enrollments given the same state (a batch the tick moved
        on at the same step, mostly), one statement by row for the others."""
        groups: dict[EnrollmentState, list[int]] = {}
        for enrollment_id, state in states:
            groups.setdefault(state, []).append(enrollment_id)
        single = []
        for state, ids in groups.items():
            if len(ids) == 1:
                single.append({"_id": ids[0], **_values(state, now)})
            else:
                q = update(ENROLLMENTS).where(E.id.in_(sorted(ids)))
                self._conn.execute(q.values(_values(state, now)))
        if single:
            self._conn.execute(_SAVE, single)

    def start_clocks(
        self, deliveries: Sequence[tuple[int, str, int, datetime]], *, at: datetime
    ) -> None:
        """(enrollment, step, visit, first due) per step email delivered ``at``: as
        ``engine.on_delivered`` decides, in one statement for a whole batch."""
        if deliveries:
            params = [
                {"_id": e, "_step": step, "_visit": visit, "at": at, "due": due}
                for e, step, visit, due in sorted(deliveries)  # lock order: by id
            ]
            self._conn.execute(_START_CLOCK, params)

    def claim_due(
        self, now: datetime, limit: int, *, fresh_since: datetime | None = None
    ) -> list[DueRow]:
        """Up to ``limit`` due enrollments: what fell due since ``fresh_since`` (default: in
        the last ``FRESH``) first, at most half of them, newest first; then the oldest."""
        since = now - FRESH if fresh_since is None else fresh_since
        fresh = list(self._conn.execute(claim_due_query(now, max(1, limit // 2), since=since)))
        rows = fresh
        if len(fresh) < limit:
            rest = claim_due_query(now, limit - len(fresh), skip=[r.id for r in fresh])
            rows = fresh + list(self._conn.execute(rest))
        return [DueRow(_row(r), r.email, r.fields or {}, tuple(r.tags or ())) for r in rows]
