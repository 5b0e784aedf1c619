"""The tables. The schema itself comes only from the Alembic migrations in the repository's
``migrations/`` (installed as ``nurture.migrations``); ``tests/migration`` proves these models
and the migrated schema agree. Queries use the tables (SQLAlchemy Core), never ORM objects: see
the stores beside."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from nurture.db.dialect import UtcDateTime

__all__ = [
    "Base",
    "Subscriber",
    "Enrollment",
    "Message",
    "Event",
    "Inbound",
    "ImapState",
    "Worker",
    "Control",
    "SUBSCRIBERS",
    "ENROLLMENTS",
    "MESSAGES",
    "EVENTS",
    "INBOUND",
    "IMAP_STATE",
    "WORKERS",
    "CONTROL",
]

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only
When = UtcDateTime()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Subscriber(Base):
    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    fields: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Tags answers, events, the form and imports gave the person (a list of strings).
    tags: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    status: Mapped[str] = mapped_column(
        String(16)
    )  # pending confirmed unsubscribed bounced complained
    created_at: Mapped[datetime] = mapped_column(When)
    confirmed_at: Mapped[datetime | None] = mapped_column(When)
    left_at: Mapped[datetime | None] = mapped_column(When)


class Enrollment(Base):
    __tablename__ = "enrollments"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "sequence_id"),
        # The tick's claim: active rows whose due_at has come, oldest first.
        Index(
            "ix_enrollments_due",
            "due_at",
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
        Index("ix_enrollments_sequence_id_step_id", "sequence_id", "step_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    sequence_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    step_id: Mapped[str] = mapped_column(String(64))
    phase: Mapped[str] = mapped_column(String(8))
    visit: Mapped[int] = mapped_column(Integer)
    due_at: Mapped[datetime | None] = mapped_column(When)
    step_sent_at: Mapped[datetime | None] = mapped_column(When)
    reminders_sent: Mapped[int] = mapped_column(Integer, default=0)
    exit_reason: Mapped[str | None] = mapped_column(String(16))
    # The steps the person said yes to (a list of step ids).
    done: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    created_at: Mapped[datetime] = mapped_column(When)
    updated_at: Mapped[datetime] = mapped_column(When)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # Record before send: one row per (enrollment, visit of a step, kind), committed before
        # the SMTP transaction, so a crash or a second worker can never send it twice unnoticed.
        UniqueConstraint("enrollment_id", "visit", "kind"),
        Index(
            "ix_messages_outgoing",
            "next_attempt_at",
            postgresql_where=text("status IN ('queued', 'sending')"),
            sqlite_where=text("status IN ('queued', 'sending')"),
        ),
        Index("ix_messages_subscriber_id", "subscriber_id"),
        # The report's per-step counts, and its percentiles of the time to a yes.
        Index("ix_messages_sequence_id_step_id", "sequence_id", "step_id"),
        Index("ix_messages_time_to_yes", "sequence_id", "step_id", "yes_seconds"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("enrollments.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    sequence_id: Mapped[str] = mapped_column(String(64))
    step_id: Mapped[str] = mapped_column(String(64))
    visit: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # step, reminder1, reminder2, ...
    status: Mapped[str] = mapped_column(String(12))  # queued sending sent failed cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(When)
    # [[url, counts_as_yes], ...]; the honeypot link is [url, false, "honeypot"]
    links: Mapped[list[Any]] = mapped_column(default=list)
    subject: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(When)
    sent_at: Mapped[datetime | None] = mapped_column(When)  # accepted by the relay
    # The worker whose claim it is while 'sending' (workers.id); when it started the SMTP
    # transaction of its current attempt; how many attempts ended with no known outcome.
    claimed_by: Mapped[str | None] = mapped_column(String(32))
    handed_at: Mapped[datetime | None] = mapped_column(When)
    unknown_outcomes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The A/B variant of its step this email is (None: the step has no variants).
    variant: Mapped[str | None] = mapped_column(String(64))
    # On a step's own email: when the person's micro-yes to that step came, how (click,
    # reply, event) and by which answer (a data-answer link): the report reads these.
    yes_at: Mapped[datetime | None] = mapped_column(When)
    yes_by: Mapped[str | None] = mapped_column(String(8))
    answer: Mapped[str | None] = mapped_column(String(64))
    # Kept as the yes and the clicks come, so the report adds up columns instead of joining
    # events: seconds from delivery to the yes, whether a reminder had gone out before it,
    # the first human click, and how many clicks on it were judged machines.
    yes_seconds: Mapped[int | None] = mapped_column(Integer)
    after_reminder: Mapped[bool | None] = mapped_column(Boolean)
    clicked_at: Mapped[datetime | None] = mapped_column(When)
    bot_clicks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Why a queued message is due later than it was decided: "window" (its send window in
    # the person's time), "cap" (their emails per day/week), "pace" (its receiving domain's
    # rate). Cleared when it is claimed for sending.
    waiting: Mapped[str | None] = mapped_column(String(8))


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_message_id_kind", "message_id", "kind"),
        Index(
            "ix_events_pending",
            "evaluate_at",
            postgresql_where=text("verdict = 'pending'"),
            sqlite_where=text("verdict = 'pending'"),
        ),
        Index("ix_events_subscriber_id", "subscriber_id"),
        # An app's own id for an outside event ("name/id"): the same id twice for the same
        # person is one event. Scoped by person, so one app's ids never collide across people.
        Index("ux_events_subscriber_id_external_id", "subscriber_id", "external_id", unique=True),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    enrollment_id: Mapped[int | None] = mapped_column(
        ForeignKey("enrollments.id", ondelete="CASCADE")
    )
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # click reply unsubscribe bounce goal confirm
    outcome: Mapped[str] = mapped_column(String(48))  # what the engine made of it
    # Clicks: human, bot, or pending until evaluate_at (when its burst window has closed).
    verdict: Mapped[str | None] = mapped_column(String(16))
    evaluate_at: Mapped[datetime | None] = mapped_column(When)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(When)
    external_id: Mapped[str | None] = mapped_column(String(200))


class Inbound(Base):
    """Every inbound message seen, once: a provider retrying its webhook is not a second reply."""

    __tablename__ = "inbound"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # sha256 of Message-ID + body (of the raw bytes when there is no Message-ID)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    header_message_id: Mapped[str | None] = mapped_column(String(998))
    sender: Mapped[str | None] = mapped_column(String(320))
    source: Mapped[str | None] = mapped_column(String(16))  # webhook imap outbox
    kind: Mapped[str | None] = mapped_column(String(16))  # human auto_reply bounce ...
    # matched unmatched automatic bounce delay complaint report malformed
    status: Mapped[str] = mapped_column(String(16))
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)  # kept when it was set aside
    matched_message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL")
    )
    note: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(When)


class Worker(Base):
    """A running worker (a `nurture run` process) and its last sign of life: mail claimed by a
    worker whose heartbeat stopped is taken over by any other."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(When)
    heartbeat_at: Mapped[datetime] = mapped_column(When)


class Control(Base):
    """Deployment-wide switches every worker reads, by name: "sending" holds a pause (until
    when, and why)."""

    __tablename__ = "control"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(When)


class ImapState(Base):
    """The last UID handled in an IMAP folder, valid while its UIDVALIDITY stays the same."""

    __tablename__ = "imap_state"

    folder: Mapped[str] = mapped_column(String(255), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(When)


SUBSCRIBERS = cast(Table, Subscriber.__table__)
ENROLLMENTS = cast(Table, Enrollment.__table__)
MESSAGES = cast(Table, Message.__table__)
EVENTS = cast(Table, Event.__table__)
INBOUND = cast(Table, Inbound.__table__)
IMAP_STATE = cast(Table, ImapState.__table__)
WORKERS = cast(Table, Worker.__table__)
CONTROL = cast(Table, Control.__table__)
