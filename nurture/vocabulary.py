"""The words nurture uses, each for one thing: who a subscriber is to us, where an enrollment
stands, what a message and an event are, how an inbound message ended.

Every value is the one stored in the database; the enums only give them names and types, so a
typo is a mypy error instead of a row nobody ever finds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

__all__ = [
    "SubscriberStatus",
    "EnrollmentStatus",
    "Phase",
    "ExitReason",
    "MessageStatus",
    "MessageKind",
    "Link",
    "HONEYPOT_PATH",
    "EventKind",
    "YesBy",
    "Verdict",
    "InboundStatus",
    "InboundSource",
]


class SubscriberStatus(StrEnum):
    pending = "pending"  # subscribed, has not confirmed (double opt-in) yet
    confirmed = "confirmed"
    unsubscribed = "unsubscribed"
    bounced = "bounced"  # their address refused our mail for good
    complained = "complained"  # they reported our mail as spam

    @property
    def sendable(self) -> bool:
        """Mail may still go to this person (the confirmation only, while pending)."""
        return self in (SubscriberStatus.pending, SubscriberStatus.confirmed)

    @property
    def weight(self) -> int:
        """How much a way of leaving says. A person who left is never moved to a status that
        says less: an unsubscribe after a bounce keeps ``bounced``, a complaint after an
        unsubscribe becomes ``complained``."""
        return _WEIGHT[self]


_WEIGHT = {
    SubscriberStatus.pending: 0,
    SubscriberStatus.confirmed: 0,
    SubscriberStatus.unsubscribed: 1,
    SubscriberStatus.bounced: 2,
    SubscriberStatus.complained: 3,
}


class EnrollmentStatus(StrEnum):
    active = "active"  # moving: an email is due or a micro-yes is awaited
    held = "held"  # waits for the subscriber to confirm (double opt-in) before anything is sent
    completed = "completed"  # said yes to the last step
    exited = "exited"  # left before the end; see ExitReason

    @property
    def finished(self) -> bool:
        return self in (EnrollmentStatus.completed, EnrollmentStatus.exited)


class Phase(StrEnum):
    send = "send"  # the current step's email goes out at due_at
    wait = "wait"  # the email went out; waiting for the micro-yes (due_at: next reminder/timeout)


class ExitReason(StrEnum):
    timeout = "timeout"
    unsubscribed = "unsubscribed"
    bounced = "bounced"
    complained = "complained"
    converted = "converted"
    failed = "failed"  # sending kept failing until the retries ran out
    ended = "ended"  # an operator ended it (`nurture end`: its step is gone from the files)
    removed = "removed"  # taken out of this one sequence (`nurture remove`, the API)

    @property
    def may_reenter(self) -> bool:
        """A person who left this way may enter the sequence again where it allows that
        (``reenter:``); one who unsubscribed, bounced or complained never silently does."""
        return self not in (
            ExitReason.unsubscribed,
            ExitReason.bounced,
            ExitReason.complained,
        )


class MessageStatus(StrEnum):
    queued = "queued"  # recorded, waiting for its next attempt
    sending = "sending"  # claimed by a worker until its lease runs out
    sent = "sent"  # the relay accepted it
    failed = "failed"  # refused for good, or given up on
    cancelled = "cancelled"  # no longer wanted (the person left or moved on) before it went

    @classmethod
    def open(cls) -> tuple[MessageStatus, MessageStatus]:
        """The statuses of mail that may still be sent."""
        return (cls.queued, cls.sending)


_KIND = re.compile(r"step|reminder([1-9][0-9]*)")


@dataclass(frozen=True, order=True)
class MessageKind:
    """Which email of a step a message is: the step's own (``reminder == 0``) or its n-th
    reminder. Stored as ``step``, ``reminder1``, ``reminder2``..."""

    reminder: int = 0

    STEP: ClassVar[MessageKind]

    @classmethod
    def parse(cls, value: str) -> MessageKind:
        match = _KIND.fullmatch(value)
        if match is None:
            raise ValueError(f"not a message kind: {value!r}")
        return cls(int(match.group(1) or 0))

    @property
    def is_step(self) -> bool:
        return self.reminder == 0

    def __str__(self) -> str:
        return "step" if self.reminder == 0 else f"reminder{self.reminder}"


MessageKind.STEP = MessageKind(0)


HONEYPOT_PATH = "/hp"  # where the hidden link of every email leads


@dataclass(frozen=True)
class Link:
    """One tracked link of a message: the URL a click on it redirects to (the only URLs
    ``/c/`` ever redirects to), whether a click on it is the step's micro-yes, whether it
    is the hidden honeypot link only machines follow, and the answer it gives (a link
    marked ``data-answer="ID"``), which routes the person."""

    url: str
    counts: bool
    honeypot: bool = False
    answer: str | None = None


class EventKind(StrEnum):
    click = "click"
    open = "open"
    reply = "reply"  # a person's reply
    auto_reply = "auto_reply"  # out-of-office and other automatic answers
    unsubscribe = "unsubscribe"
    bounce = "bounce"
    complaint = "complaint"
    delay = "delay"  # a delivery report with temporary failures only
    report = "report"  # any other automatic report
    failed = "failed"  # an email given up on
    goal = "goal"  # reported by the marketer's own app (POST /events)
    event = "event"  # any other outside event from that app: a step's ask, or just recorded
    skipped = "skipped"  # a step whose `when:` was false for this person: nothing was sent
    entered = "entered"  # entered a sequence again (its `reenter:` allowed it)
    removed = "removed"  # taken out of one sequence


class YesBy(StrEnum):
    """How a micro-yes came: what a step's ``advance_on`` names."""

    click = "click"
    reply = "reply"
    event = "event"  # an outside event the step lists (POST /events)


class Verdict(StrEnum):
    """Who made a click: only a ``human`` click can be a micro-yes."""

    human = "human"
    bot = "bot"
    pending = "pending"  # not decided until its burst window has closed


class InboundStatus(StrEnum):
    received = "received"  # being handled (a row left so is a crash mid-way)
    matched = "matched"  # a person's reply to one of our messages
    unmatched = "unmatched"  # tied to nobody
    automatic = "automatic"  # an automatic answer to one of our messages
    bounce = "bounce"
    delay = "delay"
    complaint = "complaint"
    report = "report"
    malformed = "malformed"  # unreadable, kept aside
    duplicate = "duplicate"  # seen before: nothing done (never stored)


class InboundSource(StrEnum):
    webhook = "webhook"
    imap = "imap"
    outbox = "outbox"  # the built-in catcher's reply form
