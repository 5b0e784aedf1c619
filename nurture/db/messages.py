"""The rows of the messages table as the rest of nurture sees them, and how a message's
tracked links are stored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    )
