"""Every query nurture makes, grouped in units of work.

``Store.transaction()`` yields a ``Tx``: its methods read and write inside one database
transaction and hand back frozen rows (never ORM objects). Claims use ``FOR UPDATE SKIP LOCKED``
on PostgreSQL, so several workers can share the work; on SQLite every transaction takes the
write lock up front (``BEGIN IMMEDIATE``), which serializes them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Engine, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from nurture.clock import utc
from nurture.db.models import Enrollment, Event, ImapState, Inbound, Message, Subscriber
from nurture.engine import (
    ConfirmSubscriber,
    Decision,
    EnrollmentState,
    ExitReason,
    Phase,
    SendEmail,
    Status,
    release,
    stop,
)

__all__ = [
    "Store",
    "Tx",
    "SubscriberRow",
    "EnrollmentRow",
    "DueRow",
    "MessageRow",
    "OutgoingRow",
    "StatusRow",
]

SENDABLE = ("pending", "confirmed")


@dataclass(frozen=True)
class SubscriberRow:
    id: int
    email: str
    fields: dict[str, Any]
    status: str

    @property
    def confirmed(self) -> bool:
        return self.status == "confirmed"


@dataclass(frozen=True)
class EnrollmentRow:
    id: int
    subscriber_id: int
    sequence_id: str
    state: EnrollmentState
    subscriber_status: str


@dataclass(frozen=True)
class PendingClick:
    id: int
    message_id: int
    at: datetime
    link: int
    reasons: list[str]


@dataclass(frozen=True)
class DueRow:
    """An enrollment claimed because something fell due, with what sending to it needs."""

    enrollment: EnrollmentRow
    email: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class MessageRow:
    id: int
    enrollment_id: int
    subscriber_id: int
    sequence_id: str
    step_id: str
    visit: int
    kind: str
    status: str
    links: tuple[tuple[str, bool], ...]
    sent_at: datetime | None


@dataclass(frozen=True)
class OutgoingRow:
    """A message claimed for sending, with what rendering needs."""

    id: int
    sequence_id: str
    step_id: str
    kind: str
    attempts: int
    email: str
    fields: dict[str, Any]
    resumed: bool  # a previous worker claimed it and vanished mid-send


@dataclass(frozen=True)
class StatusRow:
    sequence_id: str
    step_id: str
    status: str
    exit_reason: str | None
    count: int


def _state(row: Any) -> EnrollmentState:
    """An EnrollmentState from an ORM Enrollment or a Core row of the enrollments table."""
    return EnrollmentState(
        status=Status(row.status),
        step_id=row.step_id,
        phase=Phase(row.phase),
        visit=row.visit,
        due_at=utc(row.due_at) if row.due_at else None,
        step_sent_at=utc(row.step_sent_at) if row.step_sent_at else None,
        reminders_sent=row.reminders_sent,
        exit_reason=ExitReason(row.exit_reason) if row.exit_reason else None,
    )


ENROLLMENTS = cast(Table, Enrollment.__table__)
MESSAGES = cast(Table, Message.__table__)
SUBSCRIBERS = cast(Table, Subscriber.__table__)

_STATE_COLUMNS = (
    "status",
    "step_id",
    "phase",
    "visit",
    "due_at",
    "step_sent_at",
    "reminders_sent",
    "exit_reason",
    "updated_at",
)
_UPDATE_STATE = (
    update(ENROLLMENTS)
    .where(ENROLLMENTS.c.id == bindparam("_id"))
    .values({c: bindparam(c) for c in _STATE_COLUMNS})
)
_INSERT_MESSAGE = insert(MESSAGES)
_SET_RENDERED = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("_id"))
    .values(subject=bindparam("subject"), links=bindparam("links"))
)


def _state_values(state: EnrollmentState, now: datetime) -> dict[str, Any]:
    return {
        "status": state.status.value,
        "step_id": state.step_id,
        "phase": state.phase.value,
        "visit": state.visit,
        "due_at": state.due_at,
        "step_sent_at": state.step_sent_at,
        "reminders_sent": state.reminders_sent,
        "exit_reason": state.exit_reason.value if state.exit_reason else None,
        "updated_at": now,
    }


def _write_state(row: Enrollment, state: EnrollmentState, now: datetime) -> None:
    row.status = state.status.value
    row.step_id = state.step_id
    row.phase = state.phase.value
    row.visit = state.visit
    row.due_at = state.due_at
    row.step_sent_at = state.step_sent_at
    row.reminders_sent = state.reminders_sent
    row.exit_reason = state.exit_reason.value if state.exit_reason else None
    row.updated_at = now


def _message_row(m: Message) -> MessageRow:
    return MessageRow(
        id=m.id,
        enrollment_id=m.enrollment_id,
        subscriber_id=m.subscriber_id,
        sequence_id=m.sequence_id,
        step_id=m.step_id,
        visit=m.visit,
        kind=m.kind,
        status=m.status,
        links=tuple((str(u), bool(c)) for u, c in m.links),
        sent_at=utc(m.sent_at) if m.sent_at else None,
    )


def _subscriber_row(s: Subscriber) -> SubscriberRow:
    return SubscriberRow(s.id, s.email, dict(s.fields or {}), s.status)


class Tx:
    """The queries of one transaction."""

    def __init__(self, session: Session) -> None:
        self.s = session

    # -- subscribers -----------------------------------------------------------------------

    def subscriber_by_email(self, email: str, *, lock: bool = False) -> SubscriberRow | None:
        q = select(Subscriber).where(Subscriber.email == email)
        if lock:
            q = q.with_for_update(key_share=True)
        row = self.s.scalars(q).first()
        return _subscriber_row(row) if row else None

    def subscriber(self, subscriber_id: int) -> SubscriberRow:
        return _subscriber_row(self.s.get_one(Subscriber, subscriber_id))

    def create_subscriber(
        self, email: str, fields: dict[str, Any], *, status: str, now: datetime
    ) -> SubscriberRow:
        """A new subscriber; if a concurrent request created the same address first (a form
        submitted twice), that one, locked."""
        row = Subscriber(
            email=email,
            fields=fields,
            status=status,
            created_at=now,
            confirmed_at=now if status == "confirmed" else None,
        )
        try:
            with self.s.begin_nested():
                self.s.add(row)
                self.s.flush()
        except IntegrityError:
            existing = self.subscriber_by_email(email, lock=True)
            if existing is None:
                raise
            return existing
        return _subscriber_row(row)

    def update_subscriber(
        self,
        subscriber_id: int,
        *,
        fields: dict[str, Any] | None = None,
        status: str | None = None,
        now: datetime,
    ) -> None:
        # FOR NO KEY UPDATE: it does not block the foreign-key checks of a worker inserting
        # this subscriber's messages, which would otherwise deadlock with an unsubscribe.
        row = self.s.get_one(Subscriber, subscriber_id, with_for_update={"key_share": True})
        if fields:
            row.fields = {**(row.fields or {}), **fields}
        if status is not None and status != row.status:
            row.status = status
            if status == "confirmed":
                row.confirmed_at = now
            elif status not in SENDABLE:
                row.left_at = now

    # -- enrollments -----------------------------------------------------------------------

    def confirmed_now(self, subscriber_ids: Sequence[int]) -> set[int]:
        """Which of these subscribers are confirmed, waiting for any transaction that is
        confirming one of them right now (FOR SHARE) so its outcome is seen."""
        s = SUBSCRIBERS.c
        return set(
            self.s.scalars(
                select(s.id)
                .where(s.id.in_(subscriber_ids), s.status == "confirmed")
                .with_for_update(read=True)
            )
        )

    def enrollment_of(self, subscriber_id: int, sequence_id: str) -> EnrollmentRow | None:
        row = self.s.scalars(
            select(Enrollment).where(
                Enrollment.subscriber_id == subscriber_id, Enrollment.sequence_id == sequence_id
            )
        ).first()
        return self._enrollment_row(row) if row else None

    def _enrollment_row(
        self, row: Enrollment, subscriber_status: str | None = None
    ) -> EnrollmentRow:
        if subscriber_status is None:
            subscriber_status = self.s.get_one(Subscriber, row.subscriber_id).status
        return EnrollmentRow(
            row.id, row.subscriber_id, row.sequence_id, _state(row), subscriber_status
        )

    def create_enrollment(
        self, subscriber_id: int, sequence_id: str, state: EnrollmentState, *, now: datetime
    ) -> int | None:
        """Insert an enrollment; None if the subscriber is already in that sequence."""
        row = Enrollment(subscriber_id=subscriber_id, sequence_id=sequence_id, created_at=now)
        _write_state(row, state, now)
        try:
            with self.s.begin_nested():
                self.s.add(row)
                self.s.flush()
        except IntegrityError:
            return None
        return row.id

    def enrollment_for_update(self, enrollment_id: int) -> EnrollmentRow:
        row = self.s.get_one(Enrollment, enrollment_id, with_for_update=True)
        return self._enrollment_row(row)

    def enrollments_of_subscriber(self, subscriber_id: int) -> list[EnrollmentRow]:
        rows = self.s.scalars(
            select(Enrollment).where(Enrollment.subscriber_id == subscriber_id).with_for_update()
        ).all()
        return [self._enrollment_row(r) for r in rows]

    def claim_due(self, now: datetime, limit: int) -> list[DueRow]:
        """Active enrollments whose due_at has come, with their subscriber's address and
        fields; locked, so no other worker takes them."""
        e = ENROLLMENTS.c
        q = (
            select(
                *ENROLLMENTS.c,
                SUBSCRIBERS.c.status.label("subscriber_status"),
                SUBSCRIBERS.c.email,
                SUBSCRIBERS.c.fields,
            )
            .join(SUBSCRIBERS, SUBSCRIBERS.c.id == e.subscriber_id)
            .where(e.status == "active", e.due_at <= now)
            .order_by(e.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=ENROLLMENTS)
        )
        return [
            DueRow(
                EnrollmentRow(r.id, r.subscriber_id, r.sequence_id, _state(r), r.subscriber_status),
                r.email,
                r.fields or {},
            )
            for r in self.s.execute(q).all()
        ]

    def apply(self, row: EnrollmentRow, decision: Decision, *, now: datetime) -> None:
        """Store one decision; its messages are queued for the next tick. See ``apply_many``."""
        self.apply_many([(row, decision)], now=now)

    def apply_many(
        self,
        decisions: Sequence[tuple[EnrollmentRow, Decision]],
        *,
        now: datetime,
        claim_until: datetime | None = None,
    ) -> list[tuple[int, EnrollmentRow, SendEmail]]:
        """Store decisions: each enrollment's new state, a message row per email to send
        (record before send: the caller commits before anything is sent), confirmations.
        Two statements for a whole batch, whatever its size.

        With ``claim_until`` the new messages are claimed for sending at once (as
        ``claim_outgoing`` would, lease included), so the caller can send them without
        looking for them again. Returns (message id, enrollment, action) per new message."""
        if not decisions:
            return []
        self.s.flush()  # ORM changes made earlier in this transaction go first
        states = []
        messages: list[dict[str, Any]] = []
        made: list[tuple[EnrollmentRow, SendEmail]] = []
        confirms = []
        for row, decision in decisions:
            states.append({"_id": row.id, **_state_values(decision.state, now)})
            for action in decision.actions:
                if isinstance(action, SendEmail):
                    messages.append(
                        {
                            "enrollment_id": row.id,
                            "subscriber_id": row.subscriber_id,
                            "sequence_id": row.sequence_id,
                            "step_id": action.step_id,
                            "visit": action.visit,
                            "kind": action.kind,
                        }
                    )
                    made.append((row, action))
                elif isinstance(action, ConfirmSubscriber):
                    confirms.append(row.subscriber_id)
        self.s.execute(_UPDATE_STATE, states)
        ids: list[int] = []
        if messages:
            claimed = claim_until is not None
            common: dict[str, Any] = {
                "status": "sending" if claimed else "queued",
                "attempts": 1 if claimed else 0,
                "next_attempt_at": claim_until if claimed else now,
                "links": [],
                "created_at": now,
            }
            self.s.execute(_INSERT_MESSAGE, [{**m, **common} for m in messages])
            # The new rows' ids, by their unique key (a plain executemany, then one SELECT:
            # INSERT ... RETURNING in parameter order costs one statement per row on SQLite).
            m = MESSAGES.c
            found = {
                (r.enrollment_id, r.visit, r.kind): r.id
                for r in self.s.execute(
                    select(m.id, m.enrollment_id, m.visit, m.kind).where(
                        m.enrollment_id.in_({row.id for row, _ in made}), m.created_at == now
                    )
                )
            }
            ids = [found[(row.id, action.visit, action.kind)] for row, action in made]
        for subscriber_id in confirms:
            self.confirm_subscriber(subscriber_id, now=now)
        return [(i, row, action) for i, (row, action) in zip(ids, made, strict=True)]

    def confirm_subscriber(self, subscriber_id: int, *, now: datetime) -> None:
        """Double opt-in done: mark confirmed and let held enrollments send."""
        sub = self.s.get_one(Subscriber, subscriber_id)
        if sub.status != "pending":
            return
        sub.status = "confirmed"
        sub.confirmed_at = now
        others = self.s.scalars(
            select(Enrollment).where(
                Enrollment.subscriber_id == subscriber_id,
                Enrollment.status.in_(("held", "active")),
            )
        ).all()
        for e in others:
            if e.status == "held":
                _write_state(e, release(_state(e), now=now), now)
            elif e.phase == "wait":
                # Due now: one waiting at another confirmation step moves on at the next
                # tick (any other just finds nothing to do and waits as before).
                e.due_at = now
                e.updated_at = now

    def stop_subscriber(
        self, subscriber_id: int, *, status: str, reason: ExitReason, now: datetime
    ) -> int:
        """Unsubscribe/bounce/complaint: every enrollment stops at once, queued mail is
        cancelled. Returns how many enrollments were stopped."""
        self.update_subscriber(subscriber_id, status=status, now=now)
        stopped = 0
        for e in self.s.scalars(
            select(Enrollment).where(Enrollment.subscriber_id == subscriber_id).with_for_update()
        ).all():
            state = _state(e)
            new = stop(state, reason)
            if new != state:
                _write_state(e, new, now)
                stopped += 1
        # Queued mail, and mail claimed by a worker that has not sent it yet (or died).
        self.s.execute(
            update(Message)
            .where(
                Message.subscriber_id == subscriber_id,
                Message.status.in_(("queued", "sending")),
            )
            .values(status="cancelled", last_error=f"subscriber {status}")
        )
        return stopped

    def stop_enrollment(self, enrollment_id: int, reason: ExitReason, *, now: datetime) -> bool:
        row = self.s.get_one(Enrollment, enrollment_id, with_for_update=True)
        state = _state(row)
        new = stop(state, reason)
        if new == state:
            return False
        _write_state(row, new, now)
        self.s.execute(
            update(Message)
            .where(
                Message.enrollment_id == enrollment_id,
                Message.status.in_(("queued", "sending")),
            )
            .values(status="cancelled", last_error=f"enrollment {reason.value}")
        )
        return True

    # -- messages --------------------------------------------------------------------------

    def message(self, message_id: int) -> MessageRow | None:
        m = self.s.get(Message, message_id)
        return _message_row(m) if m else None

    def claim_outgoing(self, now: datetime, limit: int, lease: timedelta) -> list[OutgoingRow]:
        """Queued messages that are due, and messages whose sender vanished mid-send (lease
        expired). Claimed rows become 'sending' until ``now + lease``; rows whose subscriber
        can no longer be mailed are cancelled here, at the last moment before sending."""
        m = MESSAGES.c
        q = (
            select(
                m.id,
                m.sequence_id,
                m.step_id,
                m.kind,
                m.status,
                m.attempts,
                m.visit,
                SUBSCRIBERS.c.email,
                SUBSCRIBERS.c.fields,
                SUBSCRIBERS.c.status.label("subscriber_status"),
                ENROLLMENTS.c.status.label("enrollment_status"),
                ENROLLMENTS.c.visit.label("enrollment_visit"),
            )
            .join(SUBSCRIBERS, SUBSCRIBERS.c.id == m.subscriber_id)
            .join(ENROLLMENTS, ENROLLMENTS.c.id == m.enrollment_id)
            .where(m.status.in_(("queued", "sending")), m.next_attempt_at <= now)
            .order_by(m.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=MESSAGES)
        )
        out = []
        cancelled: dict[str, list[int]] = {}
        for r in self.s.execute(q).all():
            if r.subscriber_status not in SENDABLE:
                cancelled.setdefault(f"subscriber {r.subscriber_status}", []).append(r.id)
                continue
            if r.enrollment_status in ("exited", "completed"):
                cancelled.setdefault(f"enrollment {r.enrollment_status}", []).append(r.id)
                continue
            if r.visit < r.enrollment_visit:
                # Retried so long that the step timed out and the person moved on: an
                # email for a step they are no longer at would only confuse them.
                cancelled.setdefault("enrollment moved on", []).append(r.id)
                continue
            out.append(
                OutgoingRow(
                    r.id,
                    r.sequence_id,
                    r.step_id,
                    r.kind,
                    r.attempts + 1,
                    r.email,
                    dict(r.fields or {}),
                    r.status == "sending",
                )
            )
        for why, ids in cancelled.items():
            self.s.execute(
                update(MESSAGES).where(m.id.in_(ids)).values(status="cancelled", last_error=why)
            )
        if out:
            self.s.execute(
                update(MESSAGES)
                .where(m.id.in_([o.id for o in out]))
                .values(status="sending", next_attempt_at=now + lease, attempts=m.attempts + 1)
            )
        return out

    def set_rendered(self, rendered: Sequence[tuple[int, str, list[Any]]]) -> set[int]:
        """Keep each message's subject and links (the only URLs /c/ will ever redirect to).
        Returns the ids still claimed for sending: the others were cancelled meanwhile."""
        if not rendered:
            return set()
        self.s.execute(
            _SET_RENDERED,
            [{"_id": i, "subject": subject, "links": links} for i, subject, links in rendered],
        )
        m = MESSAGES.c
        return set(
            self.s.scalars(
                select(m.id).where(m.id.in_([i for i, _, _ in rendered]), m.status == "sending")
            )
        )

    def mark_sent(self, message_ids: Sequence[int], *, now: datetime) -> None:
        if message_ids:
            self.s.execute(
                update(Message)
                .where(Message.id.in_(message_ids))
                .values(status="sent", sent_at=now, next_attempt_at=None, last_error=None)
            )

    def mark_retry(self, message_id: int, *, at: datetime, error: str) -> None:
        # Only a message still claimed: one cancelled meanwhile stays cancelled.
        self.s.execute(
            update(Message)
            .where(Message.id == message_id, Message.status == "sending")
            .values(status="queued", next_attempt_at=at, last_error=error[:2000])
        )

    def mark_failed(self, message_id: int, *, error: str) -> MessageRow:
        m = self.s.get_one(Message, message_id)
        m.status = "failed"
        m.next_attempt_at = None
        m.last_error = error[:2000]
        return _message_row(m)

    # -- events ----------------------------------------------------------------------------

    def add_event(
        self,
        *,
        subscriber_id: int,
        kind: str,
        outcome: str,
        now: datetime,
        enrollment_id: int | None = None,
        message_id: int | None = None,
        detail: dict[str, Any] | None = None,
        verdict: str | None = None,
        evaluate_at: datetime | None = None,
    ) -> None:
        self.s.add(
            Event(
                subscriber_id=subscriber_id,
                enrollment_id=enrollment_id,
                message_id=message_id,
                kind=kind,
                outcome=outcome[:48],
                detail=detail or {},
                verdict=verdict,
                evaluate_at=evaluate_at,
                created_at=now,
            )
        )

    def pending_clicks(self, now: datetime, limit: int) -> list[PendingClick]:
        """Clicks whose burst window has closed, locked for deciding."""
        q = (
            select(Event)
            .where(Event.verdict == "pending", Event.evaluate_at <= now)
            .order_by(Event.evaluate_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [
            PendingClick(
                e.id,
                int(e.message_id or 0),
                utc(e.created_at),
                int((e.detail or {}).get("link", -1)),
                list((e.detail or {}).get("reasons", [])),
            )
            for e in self.s.scalars(q)
        ]

    def clicks_on(self, message_id: int, start: datetime, end: datetime) -> list[str]:
        """The URLs clicked on a message between two times (one per click, any verdict)."""
        q = select(Event.detail).where(
            Event.message_id == message_id,
            Event.kind == "click",
            Event.created_at >= start,
            Event.created_at <= end,
        )
        return [str((d or {}).get("url", "")) for d in self.s.scalars(q)]

    def decide_click(
        self, event_id: int, *, verdict: str, outcome: str, reasons: list[str]
    ) -> None:
        e = self.s.get_one(Event, event_id)
        e.verdict = verdict
        e.outcome = outcome[:48]
        e.detail = {**(e.detail or {}), "reasons": reasons}
        e.evaluate_at = None

    def click_counts(self) -> list[tuple[str, str, str, int]]:
        """(sequence, step, verdict, clicks) for every click with a verdict."""
        q = (
            select(Message.sequence_id, Message.step_id, Event.verdict, func.count())
            .join(Message, Message.id == Event.message_id)
            .where(Event.kind == "click", Event.verdict.is_not(None))
            .group_by(Message.sequence_id, Message.step_id, Event.verdict)
        )
        return [(a, b, str(c), int(n)) for a, b, c, n in self.s.execute(q).all()]

    def record_inbound(
        self,
        *,
        digest: str,
        header_message_id: str | None,
        sender: str | None,
        now: datetime,
        source: str,
        kind: str | None = None,
        status: str = "received",
        raw: bytes | None = None,
        note: str | None = None,
    ) -> int | None:
        """Remember an inbound message; None if the same message was seen before."""
        row = Inbound(
            digest=digest,
            header_message_id=header_message_id[:998] if header_message_id else None,
            sender=sender[:320] if sender else None,
            source=source,
            kind=kind,
            status=status,
            raw=raw,
            note=note[:2000] if note else None,
            received_at=now,
        )
        try:
            with self.s.begin_nested():
                self.s.add(row)
                self.s.flush()
        except IntegrityError:
            return None
        return row.id

    def finish_inbound(
        self, inbound_id: int, *, status: str, matched: int | None, note: str
    ) -> None:
        self.s.execute(
            update(Inbound)
            .where(Inbound.id == inbound_id)
            .values(status=status, matched_message_id=matched, note=note[:2000])
        )

    def imap_last_uid(self, folder: str, uidvalidity: int) -> int:
        """The last UID handled in the folder; 0 when its UIDVALIDITY changed (the server
        renumbered it: everything is looked at again, and receive() skips what it knows)."""
        row = self.s.get(ImapState, folder)
        return row.last_uid if row is not None and row.uidvalidity == uidvalidity else 0

    def set_imap_last_uid(self, folder: str, uidvalidity: int, uid: int, *, now: datetime) -> None:
        row = self.s.get(ImapState, folder, with_for_update=True)
        if row is None:
            self.s.add(
                ImapState(folder=folder, uidvalidity=uidvalidity, last_uid=uid, updated_at=now)
            )
        else:
            row.uidvalidity, row.last_uid, row.updated_at = uidvalidity, uid, now

    def inbound_list(self, limit: int) -> list[dict[str, Any]]:
        q = select(Inbound).order_by(Inbound.id.desc()).limit(limit)
        return [
            {
                "id": r.id,
                "received_at": utc(r.received_at),
                "source": r.source,
                "kind": r.kind,
                "status": r.status,
                "sender": r.sender,
                "note": r.note,
                "kept": r.raw is not None,
            }
            for r in self.s.scalars(q)
        ]

    def inbound_counts(self) -> dict[str, int]:
        q = select(Inbound.status, func.count()).group_by(Inbound.status)
        return {status: n for status, n in self.s.execute(q).all()}

    def inbound_raw(self, inbound_id: int) -> bytes | None:
        row = self.s.get(Inbound, inbound_id)
        return row.raw if row is not None else None

    def waiting_messages(self, subscriber_id: int) -> list[tuple[EnrollmentRow, MessageRow]]:
        """Each active enrollment of the subscriber waiting for a micro-yes, with the email of
        its current step (for matching a reply by its sender's address)."""
        out = []
        for row in self.enrollments_of_subscriber(subscriber_id):
            state = row.state
            if state.status is not Status.active or state.phase is not Phase.wait:
                continue
            message = self.s.scalars(
                select(Message)
                .where(
                    Message.enrollment_id == row.id,
                    Message.visit == state.visit,
                    Message.kind == "step",
                )
                .limit(1)
            ).first()
            if message is not None:
                out.append((row, _message_row(message)))
        return out

    # -- reports ---------------------------------------------------------------------------

    def status_counts(self) -> list[StatusRow]:
        q = select(
            Enrollment.sequence_id,
            Enrollment.step_id,
            Enrollment.status,
            Enrollment.exit_reason,
            func.count(),
        ).group_by(
            Enrollment.sequence_id, Enrollment.step_id, Enrollment.status, Enrollment.exit_reason
        )
        return [StatusRow(*r) for r in self.s.execute(q).all()]

    def message_counts(self) -> dict[str, int]:
        q = select(Message.status, func.count()).group_by(Message.status)
        return {status: n for status, n in self.s.execute(q).all()}


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._sessions() as session, session.begin():
            yield Tx(session)

    def dispose(self) -> None:
        self.engine.dispose()
