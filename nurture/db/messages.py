"""The rows of the messages table as the rest of nurture sees them, and how a message's
tracked links are stored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from nurture.vocabulary import (
    HONEYPOT_PATH,
    EnrollmentStatus,
    Link,
    MessageKind,
    MessageStatus,
    SubscriberStatus,
)

__all__ = [
    "NewMessage",
    "MessageRow",
    "OutgoingRow",
    "ClaimedRow",
    "message_row",
    "new_message_values",
    "links_from_json",
    "links_to_json",
]


@dataclass(frozen=True)
class NewMessage:
    """A message the journey decided to send: recorded (and claimed) before any SMTP."""

    enrollment_id: int
    subscriber_id: int
    sequence_id: str
    step_id: str
    visit: int
    kind: MessageKind
    variant: str | None = field(default=None, kw_only=True)  # its A/B variant, if any
    # Not before then, and why (a send window, the per-person cap): None goes at once.
    not_before: datetime | None = field(default=None, kw_only=True, compare=False)
    waiting: str | None = field(default=None, kw_only=True, compare=False)


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
    enrollment_id: int
    sequence_id: str
    step_id: str
    visit: int
    kind: MessageKind
    attempts: int  # this attempt included
    email: str
    fields: dict[str, Any]
    resumed: bool = False  # a previous worker was sending it when it stopped
    unknown_outcomes: int = 0  # attempts before this one that ended with no known outcome
    tags: tuple[str, ...] = ()
    variant: str | None = None


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
        answer = str(item[3]) if len(item) > 3 and item[3] is not None else None
        return Link(url, counts, honeypot=item[2] == "honeypot", answer=answer)
    # Written before the honeypot was marked: it was always the last link, never counting,
    # and went to /hp under whatever base URL was configured then.
    legacy = last and not counts and urlsplit(url).path.endswith(HONEYPOT_PATH)
    return Link(url, counts, honeypot=legacy)


def links_from_json(items: list[Any] | None) -> tuple[Link, ...]:
    items = items or []
    return tuple(_link(item, last=i == len(items) - 1) for i, item in enumerate(items))


def _link_json(x: Link) -> list[Any]:
    if x.answer is not None:
        return [x.url, x.counts, "", x.answer]
    return [x.url, x.counts, "honeypot"] if x.honeypot else [x.url, x.counts]


def links_to_json(links: Sequence[Link]) -> list[list[Any]]:
    """[url, counts], [url, false, "honeypot"], or [url, counts, "", answer]."""
    return [_link_json(x) for x in links]


def message_row(r: Any) -> MessageRow:
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
        variant=r.variant,
    )


def new_message_values(m: NewMessage, *, now: datetime, claimed_by: str | None) -> dict[str, Any]:
    """The row of a message decided on now: claimed for ``claimed_by`` if given, else
    queued; queued for later, nobody's claim, when it waits (a send window, the cap)."""
    if m.not_before is not None and m.not_before > now:
        status, attempts, worker, due = MessageStatus.queued, 0, None, m.not_before
    elif claimed_by is not None:
        status, attempts, worker, due = MessageStatus.sending, 1, claimed_by, now
    else:
        status, attempts, worker, due = MessageStatus.queued, 0, None, now
    return {
        "enrollment_id": m.enrollment_id,
        "subscriber_id": m.subscriber_id,
        "sequence_id": m.sequence_id,
        "step_id": m.step_id,
        "visit": m.visit,
        "kind": str(m.kind),
        "variant": m.variant,
        "links": [],
        "created_at": now,
        "status": status.value,
        "attempts": attempts,
        "claimed_by": worker,
        "next_attempt_at": due,
        "waiting": m.waiting if due > now else None,
    }
