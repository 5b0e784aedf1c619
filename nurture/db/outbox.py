"""The messages table: every email decided on, recorded before it is sent, with its claim for
sending, its tracked links and its outcome."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    Connection,
    Select,
    and_,
    bindparam,
    case,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DataError, IntegrityError

from nurture.db.dialect import claim
from nurture.db.messages import (
    ClaimedRow,
    MessageRow,
    NewMessage,
    OutgoingRow,
    links_to_json,
    message_row,
    new_message_values,
)
from nurture.db.models import ENROLLMENTS, MESSAGES, SUBSCRIBERS, WORKERS
from nurture.vocabulary import EnrollmentStatus, Link, MessageKind, MessageStatus, SubscriberStatus

__all__ = ["OutboxStore", "claim_outgoing_query"]

M = MESSAGES.c
OPEN = [s.value for s in MessageStatus.open()]
# What the database says about one row's values (a NUL PostgreSQL cannot store, a constraint):
# that row's fault, not the batch's. A lost connection is neither: the batch fails as a whole.
_ROW_ERRORS = (DataError, IntegrityError)


def _storable(error: str) -> str:
    """An error text as it can be kept on either database: NUL and lone surrogates (from a
    person's field quoted in an exception, a relay's answer) written out, at most 2,000
    characters."""
    text = error.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:2000]


_MESSAGE_COLUMNS = (
    M.id,
    M.enrollment_id,
    M.subscriber_id,
    M.sequence_id,
    M.step_id,
    M.visit,
    M.kind,
    M.status,
    M.links,
    M.sent_at,
    M.variant,
)
_SET_RENDERED = (
    update(MESSAGES)
    .where(M.id == bindparam("_id"))
    .values(subject=bindparam("subject"), links=bindparam("links"))
)


def _claimable() -> Select[Any]:
    return (
        select(
            M.id,
            M.enrollment_id,
            M.sequence_id,
            M.step_id,
            M.visit.label("step_visit"),
            M.kind,
            M.attempts,
            M.visit,
            M.handed_at,
            M.unknown_outcomes,
            M.variant,
            SUBSCRIBERS.c.email,
            SUBSCRIBERS.c.fields,
            SUBSCRIBERS.c.tags,
            SUBSCRIBERS.c.status.label("subscriber_status"),
            ENROLLMENTS.c.status.label("enrollment_status"),
            ENROLLMENTS.c.visit.label("enrollment_visit"),
        )
        .join(SUBSCRIBERS, SUBSCRIBERS.c.id == M.subscriber_id)
        .join(ENROLLMENTS, ENROLLMENTS.c.id == M.enrollment_id)
    )


def claim_outgoing_query(now: datetime, limit: int) -> Select[Any]:
    """Queued messages due for an attempt, oldest first, with what tells whether each is still
    wanted; each worker skips the rows another one holds."""
    q = (
        _claimable()
        .where(M.status == MessageStatus.queued.value, M.next_attempt_at <= now)
        .order_by(M.next_attempt_at)
        .limit(limit)
    )
    return claim(q, of=MESSAGES)


def _claimed(r: Any) -> ClaimedRow:
    return ClaimedRow(
        OutgoingRow(
            r.id,
            r.enrollment_id,
            r.sequence_id,
            r.step_id,
            r.step_visit,
            MessageKind.parse(r.kind),
            r.attempts + 1,
            r.email,
            dict(r.fields or {}),
            resumed=r.handed_at is not None,
            unknown_outcomes=r.unknown_outcomes,
            tags=tuple(r.tags or ()),
            variant=r.variant,
        ),
        visit=r.visit,
        subscriber_status=SubscriberStatus(r.subscriber_status),
        enrollment_status=EnrollmentStatus(r.enrollment_status),
        enrollment_visit=r.enrollment_visit,
    )


_SENDABLE = [s.value for s in SubscriberStatus if s.sendable]
_UNFINISHED = [s.value for s in EnrollmentStatus if not s.finished]
_IDS: BindParameter[int] = bindparam("ids", expanding=True)
_WANTED = and_(
    select(SUBSCRIBERS.c.id)
    .where(SUBSCRIBERS.c.id == M.subscriber_id, SUBSCRIBERS.c.status.in_(_SENDABLE))
    .exists(),
    select(ENROLLMENTS.c.id)
    .where(
        ENROLLMENTS.c.id == M.enrollment_id,
        ENROLLMENTS.c.status.in_(_UNFINISHED),
        ENROLLMENTS.c.visit <= M.visit,
    )
    .exists(),
)
# Built once: the send path runs these for every message.
_HAND_OFF = (
    update(MESSAGES)
    .where(
        M.id.in_(_IDS),
        M.status == MessageStatus.sending.value,
        M.claimed_by == bindparam("worker"),
        _WANTED,
    )
    .values(handed_at=bindparam("now"))
    .returning(M.id)
)
_MARK_SENT = (
    update(MESSAGES)
    .where(
        M.id.in_(_IDS),
        M.status == MessageStatus.sending.value,
        M.claimed_by == bindparam("worker"),
    )
    .values(
        status=MessageStatus.sent.value,
        sent_at=bindparam("now"),
        next_attempt_at=None,
        last_error=None,
    )
)


class OutboxStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, message_id: int) -> MessageRow | None:
        row = self._conn.execute(select(*_MESSAGE_COLUMNS).where(M.id == message_id)).first()
        return message_row(row) if row else None

    def step_email(self, enrollment_id: int, visit: int) -> MessageRow | None:
        """The step's own email of one visit of a step (not a reminder)."""
        q = select(*_MESSAGE_COLUMNS).where(
            M.enrollment_id == enrollment_id, M.visit == visit, M.kind == str(MessageKind.STEP)
        )
        row = self._conn.execute(q.limit(1)).first()
        return message_row(row) if row else None

    def add(
        self, messages: Sequence[NewMessage], *, now: datetime, claimed_by: str | None = None
    ) -> list[int]:
        """Record messages (record before send: the caller commits before anything is sent);
        their ids, in order. With ``claimed_by`` they are claimed for that worker at once, so
        it sends them without looking for them again; one due later (``not_before``) waits in
        the queue. Two statements for a whole batch."""
        if not messages:
            return []
        rows = [new_message_values(m, now=now, claimed_by=claimed_by) for m in messages]
        self._conn.execute(insert(MESSAGES), rows)
        # The new rows' ids, by their unique key (a plain executemany, then one SELECT:
        # INSERT ... RETURNING in parameter order costs one statement per row on SQLite).
        found = {
            (r.enrollment_id, r.visit, r.kind): r.id
            for r in self._conn.execute(
                select(M.id, M.enrollment_id, M.visit, M.kind).where(
                    M.enrollment_id.in_({m.enrollment_id for m in messages}), M.created_at == now
                )
            )
        }
        return [found[(m.enrollment_id, m.visit, str(m.kind))] for m in messages]

    def claim(self, now: datetime, limit: int) -> list[ClaimedRow]:
        """Queued messages due for an attempt, locked for this transaction; ``lease`` or
        ``cancel`` each of them before it ends."""
        return [_claimed(r) for r in self._conn.execute(claim_outgoing_query(now, limit))]

    def held_by(self, worker: str, message_ids: Sequence[int]) -> list[ClaimedRow]:
        """Those of these messages still claimed by ``worker``, with what tells whether each
        is still wanted."""
        if not message_ids:
            return []
        q = _claimable().where(
            M.id.in_(message_ids),
            M.status == MessageStatus.sending.value,
            M.claimed_by == worker,
        )
        return [_claimed(r) for r in self._conn.execute(q)]

    def lease(self, message_ids: Sequence[int], *, worker: str, now: datetime) -> None:
        """Claimed messages become 'sending' for ``worker``, one more attempt counted."""
        self._set(
            message_ids,
            status=MessageStatus.sending.value,
            claimed_by=worker,
            handed_at=None,
            next_attempt_at=now,
            attempts=M.attempts + 1,
            waiting=None,
        )

    def _set(self, message_ids: Sequence[int], **values: Any) -> None:
        if message_ids:
            self._conn.execute(update(MESSAGES).where(M.id.in_(message_ids)).values(values))

    def cancel(self, message_ids: Sequence[int], *, why: str) -> None:
        self._set(message_ids, status=MessageStatus.cancelled.value, last_error=_storable(why))

    def cancel_open(
        self, *, why: str, subscriber_id: int | None = None, enrollment_id: int | None = None
    ) -> None:
        """Cancel a person's (or one enrollment's) mail not handed to SMTP yet: queued, or
        claimed by a worker that has not started it. Mail on the wire at this instant goes."""
        q = update(MESSAGES).where(M.status.in_(OPEN), M.handed_at.is_(None))
        if subscriber_id is not None:
            q = q.where(M.subscriber_id == subscriber_id)
        if enrollment_id is not None:
            q = q.where(M.enrollment_id == enrollment_id)
        self._conn.execute(q.values(status=MessageStatus.cancelled.value, last_error=why))

    def hand_off(self, message_ids: Sequence[int], *, worker: str, now: datetime) -> set[int]:
        """Mark messages as handed to SMTP now, those still claimed by ``worker`` whose person
        may still be mailed and whose enrollment still wants them; the ids that may go. The
        last check before the wire: an unsubscribe committed before it wins."""
        if not message_ids:
            return set()
        params = {"ids": list(message_ids), "worker": worker, "now": now}
        return set(self._conn.scalars(_HAND_OFF, params))

    def set_rendered(
        self, rendered: Sequence[tuple[int, str, Sequence[Link]]]
    ) -> tuple[set[int], dict[int, str]]:
        """Keep each message's subject and links (the only URLs /c/ will ever redirect to).
        Returns the ids still claimed for sending (the others were cancelled meanwhile), and
        those whose row the database refused, with why: one statement for the batch, and row
        by row if it fails, so that one value the database cannot hold (a NUL on
        PostgreSQL) fails its own message, never the batch."""
        if not rendered:
            return set(), {}
        params = [{"_id": i, "subject": s, "links": links_to_json(x)} for i, s, x in rendered]
        refused: dict[int, str] = {}
        try:
            with self._conn.begin_nested():
                self._conn.execute(_SET_RENDERED, params)
        except _ROW_ERRORS:
            for (message_id, _, _), one in zip(rendered, params, strict=True):
                try:
                    with self._conn.begin_nested():
                        self._conn.execute(_SET_RENDERED, one)
                except _ROW_ERRORS as exc:
                    refused[message_id] = str(exc.orig or exc).strip().splitlines()[0]
        q = select(M.id).where(
            M.id.in_([i for i, _, _ in rendered if i not in refused]),
            M.status == MessageStatus.sending.value,
        )
        return set(self._conn.scalars(q)), refused

    def mark_sent(self, message_ids: Sequence[int], *, worker: str, now: datetime) -> None:
        """Messages the relay accepted; only those still 'sending' for ``worker`` (a
        cancelled row stays cancelled; one another worker took over is its)."""
        if message_ids:
            self._conn.execute(_MARK_SENT, {"ids": list(message_ids), "now": now, "worker": worker})

    def _requeue(self, message_id: int, worker: str, **values: Any) -> None:
        # Only a message still claimed by this worker: one cancelled meanwhile stays
        # cancelled, one another worker took over is its.
        self._conn.execute(
            update(MESSAGES)
            .where(
                M.id == message_id,
                M.status == MessageStatus.sending.value,
                M.claimed_by == worker,
            )
            .values(status=MessageStatus.queued.value, claimed_by=None, handed_at=None, **values)
        )

    def mark_retry(
        self,
        message_id: int,
        *,
        at: datetime,
        error: str,
        worker: str,
        uncount: bool = False,
        waiting: str | None = None,
    ) -> None:
        """Send again at ``at``; ``uncount``: the attempt was not the message's (never
        started, refused because of us, a receiver asking us to slow down), so it does not
        count towards giving up. ``waiting``: why it waits (``pace``)."""
        extra: dict[str, Any] = {"attempts": M.attempts - 1} if uncount else {}
        if waiting is not None:
            extra["waiting"] = waiting
        self._requeue(message_id, worker, next_attempt_at=at, last_error=_storable(error), **extra)

    def hold(self, message_ids: Sequence[int], *, until: datetime) -> None:
        """Queued messages claimed but not leased: due again at ``until``, nothing else
        changed (a reminder held for a yes in waiting)."""
        if message_ids:
            self._set(message_ids, next_attempt_at=until)

    def defer(self, message_ids: Sequence[int], *, at: datetime, worker: str) -> None:
        """Claimed, not started: their domain's pace has no room before ``at``. Queued
        again for then, the attempt not counted."""
        if message_ids:
            mine = and_(M.id.in_(message_ids), M.claimed_by == worker)
            self._unclaim(mine, now=at, waiting="pace")

    def mark_unknown(self, message_id: int, *, at: datetime, error: str, worker: str) -> None:
        """No outcome is known (timed out after the data, connection lost in DATA): sent again
        at ``at``, with the same Message-ID, and counted."""
        self._requeue(
            message_id,
            worker,
            next_attempt_at=at,
            last_error=_storable(error),
            unknown_outcomes=M.unknown_outcomes + 1,
        )

    def release(self, message_ids: Sequence[int], *, now: datetime) -> None:
        """Claimed but never started (a shutdown, a pause): queued again, due now, the
        attempt not counted."""
        if message_ids:
            self._unclaim(M.id.in_(message_ids), now=now)

    def _unclaim(self, which: Any, *, now: datetime, **extra: Any) -> int:
        done = self._conn.execute(
            update(MESSAGES)
            .where(which, M.status == MessageStatus.sending.value, M.handed_at.is_(None))
            .values(
                status=MessageStatus.queued.value,
                claimed_by=None,
                next_attempt_at=now,
                attempts=M.attempts - 1,
                **extra,
            )
        )
        return int(done.rowcount)

    def release_claims(self, worker: str, *, now: datetime) -> int:
        """Everything ``worker`` claimed and did not start: queued again, due now (a
        shutdown). What it had handed to SMTP stays claimed, for ``reclaim``."""
        return self._unclaim(M.claimed_by == worker, now=now)

    def due_now(self, *, until: datetime, now: datetime) -> int:
        """Queued messages due by ``until`` (held back by a pause) become due now; those
        waiting for their send window or the cap keep waiting."""
        done = self._conn.execute(
            update(MESSAGES)
            .where(
                M.status == MessageStatus.queued.value,
                or_(M.waiting.is_(None), M.waiting == "pace"),
                M.next_attempt_at > now,
                M.next_attempt_at <= until,
            )
            .values(next_attempt_at=now)
        )
        return int(done.rowcount)

    def reclaim(self, *, now: datetime) -> int:
        """Mail claimed by workers that are gone (no row in workers any more), or by a lease
        of before there were workers that ran out: queued again, due now. A message one of
        them had handed to SMTP keeps ``handed_at``: it is resent as resumed (its outcome was
        never heard)."""
        live = select(WORKERS.c.id)
        orphaned = or_(
            and_(M.claimed_by.is_(None), M.next_attempt_at <= now),
            and_(M.claimed_by.is_not(None), M.claimed_by.not_in(live)),
        )
        # A message it had not started was not attempted: the attempt is taken back.
        attempts = case((M.handed_at.is_(None), M.attempts - 1), else_=M.attempts)
        done = self._conn.execute(
            update(MESSAGES)
            .where(M.status == MessageStatus.sending.value, orphaned)
            .values(
                status=MessageStatus.queued.value,
                claimed_by=None,
                next_attempt_at=now,
                attempts=attempts,
            )
        )
        return int(done.rowcount)

    def leftovers(self, worker: str) -> list[tuple[int, bool]]:
        """(message id, handed to SMTP) of what ``worker`` still holds."""
        q = select(M.id, M.handed_at.is_not(None)).where(
            M.status == MessageStatus.sending.value, M.claimed_by == worker
        )
        return [(r[0], bool(r[1])) for r in self._conn.execute(q)]

    def mark_failed(self, message_id: int, *, error: str, worker: str) -> MessageRow | None:
        """The message fails for good, if ``worker`` still holds it; None otherwise."""
        done = self._conn.execute(
            update(MESSAGES)
            .where(
                M.id == message_id,
                M.status == MessageStatus.sending.value,
                M.claimed_by == worker,
            )
            .values(
                status=MessageStatus.failed.value, next_attempt_at=None, last_error=_storable(error)
            )
        )
        return self.get(message_id) if done.rowcount else None
