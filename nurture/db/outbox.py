"""The messages table: every email decided on, recorded before it is sent, with its claim for
sending, its tracked links and its outcome."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, Select, bindparam, insert, select, update

from nurture.db.dialect import claim
from nurture.db.models import ENROLLMENTS, MESSAGES, SUBSCRIBERS
from nurture.vocabulary import (
    HONEYPOT_PATH,
    EnrollmentStatus,
    Link,
    MessageKind,
    MessageStatus,
    SubscriberStatus,
)

__all__ = [
    "MessageRow",
    "NewMessage",
    "ClaimedRow",
    "OutgoingRow",
    "OutboxStore",
    "claim_outgoing_query",
]

M = MESSAGES.c
OPEN = [s.value for s in MessageStatus.open()]


@dataclass(frozen=True)
class NewMessage:
    """A message the journey decided to send: recorded (and claimed) before any SMTP."""

    enrollment_id: int
    subscriber_id: int
    sequence_id: str
    step_id: str
    visit: int
    kind: MessageKind


@dataclass(frozen=True)
class MessageRow(NewMessage):
    """A recorded message: what was decided, and what became of it."""

    id: int
    status: MessageStatus
    links: tuple[Link, ...]
    sent_at: datetime | None


@dataclass(frozen=True)
class OutgoingRow:
    """A message claimed for sending, with what rendering it needs."""

    id: int
    sequence_id: str
    step_id: str
    kind: MessageKind
    attempts: int  # this attempt included
    email: str
    fields: dict[str, Any]
    resumed: bool = False  # a previous worker claimed it and vanished mid-send


@dataclass(frozen=True)
class ClaimedRow:
    """A message due for an attempt, locked, with what tells whether it is still wanted."""

    outgoing: OutgoingRow
    visit: int
    subscriber_status: SubscriberStatus
    enrollment_status: EnrollmentStatus
    enrollment_visit: int


def _link(item: list[Any], *, last: bool) -> Link:
    url, counts = str(item[0]), bool(item[1])
    if len(item) > 2:
        return Link(url, counts, honeypot=item[2] == "honeypot")
    # Written before the honeypot was marked: it was always the last link, never counting,
    # and went to /hp under whatever base URL was configured then.
    legacy = last and not counts and urlsplit(url).path.endswith(HONEYPOT_PATH)
    return Link(url, counts, honeypot=legacy)


def links_from_json(items: list[Any] | None) -> tuple[Link, ...]:
    items = items or []
    return tuple(_link(item, last=i == len(items) - 1) for i, item in enumerate(items))


def links_to_json(links: Sequence[Link]) -> list[list[Any]]:
    return [[x.url, x.counts, "honeypot"] if x.honeypot else [x.url, x.counts] for x in links]


def _message(r: Any) -> MessageRow:
    return MessageRow(
        id=r.id,
        enrollment_id=r.enrollment_id,
        subscriber_id=r.subscriber_id,
        sequence_id=r.sequence_id,
        step_id=r.step_id,
        visit=r.visit,
        kind=MessageKind.parse(r.kind),
        status=MessageStatus(r.status),
        links=links_from_json(r.links),
        sent_at=r.sent_at,
    )


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
)
_SET_RENDERED = (
    update(MESSAGES)
    .where(M.id == bindparam("_id"))
    .values(subject=bindparam("subject"), links=bindparam("links"))
)


def claim_outgoing_query(now: datetime, limit: int) -> Select[Any]:
    """Messages due for an attempt (queued and due, or claimed by a worker whose lease ran
    out), oldest first; each worker skips the rows another one holds."""
    q = (
        select(
            M.id,
            M.sequence_id,
            M.step_id,
            M.kind,
            M.status,
            M.attempts,
            M.visit,
            SUBSCRIBERS.c.email,
            SUBSCRIBERS.c.fields,
            SUBSCRIBERS.c.status.label("subscriber_status"),
            ENROLLMENTS.c.status.label("enrollment_status"),
            ENROLLMENTS.c.visit.label("enrollment_visit"),
        )
        .join(SUBSCRIBERS, SUBSCRIBERS.c.id == M.subscriber_id)
        .join(ENROLLMENTS, ENROLLMENTS.c.id == M.enrollment_id)
        .where(M.status.in_(OPEN), M.next_attempt_at <= now)
        .order_by(M.next_attempt_at)
        .limit(limit)
    )
    return claim(q, of=MESSAGES)


class OutboxStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, message_id: int) -> MessageRow | None:
        row = self._conn.execute(select(*_MESSAGE_COLUMNS).where(M.id == message_id)).first()
        return _message(row) if row else None

    def step_email(self, enrollment_id: int, visit: int) -> MessageRow | None:
        """The step's own email of one visit of a step (not a reminder)."""
        q = select(*_MESSAGE_COLUMNS).where(
            M.enrollment_id == enrollment_id, M.visit == visit, M.kind == str(MessageKind.STEP)
        )
        row = self._conn.execute(q.limit(1)).first()
        return _message(row) if row else None

    def add(
        self, messages: Sequence[NewMessage], *, now: datetime, claim_until: datetime | None
    ) -> list[int]:
        """Record messages (record before send: the caller commits before anything is sent);
        their ids, in order. With ``claim_until`` they are claimed for sending at once, lease
        included, so the caller sends them without looking for them again. Two statements
        for a whole batch."""
        if not messages:
            return []
        claimed = claim_until is not None
        common: dict[str, Any] = {
            "status": (MessageStatus.sending if claimed else MessageStatus.queued).value,
            "attempts": 1 if claimed else 0,
            "next_attempt_at": claim_until if claimed else now,
            "links": [],
            "created_at": now,
        }
        rows = [
            {
                "enrollment_id": m.enrollment_id,
                "subscriber_id": m.subscriber_id,
                "sequence_id": m.sequence_id,
                "step_id": m.step_id,
                "visit": m.visit,
                "kind": str(m.kind),
                **common,
            }
            for m in messages
        ]
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
        """Messages due for an attempt, locked for this transaction; ``lease`` or ``cancel``
        each of them before it ends."""
        return [
            ClaimedRow(
                OutgoingRow(
                    r.id,
                    r.sequence_id,
                    r.step_id,
                    MessageKind.parse(r.kind),
                    r.attempts + 1,
                    r.email,
                    dict(r.fields or {}),
                    r.status == MessageStatus.sending.value,
                ),
                visit=r.visit,
                subscriber_status=SubscriberStatus(r.subscriber_status),
                enrollment_status=EnrollmentStatus(r.enrollment_status),
                enrollment_visit=r.enrollment_visit,
            )
            for r in self._conn.execute(claim_outgoing_query(now, limit))
        ]

    def lease(self, message_ids: Sequence[int], *, until: datetime) -> None:
        """Claimed messages become 'sending' until ``until``, one more attempt counted."""
        status = MessageStatus.sending.value
        self._set(message_ids, status=status, next_attempt_at=until, attempts=M.attempts + 1)

    def _set(self, message_ids: Sequence[int], **values: Any) -> None:
        if message_ids:
            self._conn.execute(update(MESSAGES).where(M.id.in_(message_ids)).values(values))

    def cancel(self, message_ids: Sequence[int], *, why: str) -> None:
        self._set(message_ids, status=MessageStatus.cancelled.value, last_error=why)

    def cancel_open(
        self, *, why: str, subscriber_id: int | None = None, enrollment_id: int | None = None
    ) -> None:
        """Cancel a person's (or one enrollment's) mail not sent yet: queued, or claimed by a
        worker that has not sent it yet (or died)."""
        q = update(MESSAGES).where(M.status.in_(OPEN))
        if subscriber_id is not None:
            q = q.where(M.subscriber_id == subscriber_id)
        if enrollment_id is not None:
            q = q.where(M.enrollment_id == enrollment_id)
        self._conn.execute(q.values(status=MessageStatus.cancelled.value, last_error=why))

    def set_rendered(self, rendered: Sequence[tuple[int, str, Sequence[Link]]]) -> set[int]:
        """Keep each message's subject and links (the only URLs /c/ will ever redirect to).
        Returns the ids still claimed for sending: the others were cancelled meanwhile."""
        if not rendered:
            return set()
        self._conn.execute(
            _SET_RENDERED,
            [{"_id": i, "subject": s, "links": links_to_json(x)} for i, s, x in rendered],
        )
        q = select(M.id).where(
            M.id.in_([i for i, _, _ in rendered]), M.status == MessageStatus.sending.value
        )
        return set(self._conn.scalars(q))

    def mark_sent(self, message_ids: Sequence[int], *, now: datetime) -> None:
        status = MessageStatus.sent.value
        self._set(message_ids, status=status, sent_at=now, next_attempt_at=None, last_error=None)

    def mark_retry(self, message_id: int, *, at: datetime, error: str) -> None:
        # Only a message still claimed: one cancelled meanwhile stays cancelled.
        self._conn.execute(
            update(MESSAGES)
            .where(M.id == message_id, M.status == MessageStatus.sending.value)
            .values(status=MessageStatus.queued.value, next_attempt_at=at, last_error=error[:2000])
        )

    def mark_failed(self, message_id: int, *, error: str) -> MessageRow:
        status = MessageStatus.failed.value
        self._set([message_id], status=status, next_attempt_at=None, last_error=error[:2000])
        found = self.get(message_id)
        assert found is not None
        return found
