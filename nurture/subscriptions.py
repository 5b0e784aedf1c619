"""Joining and leaving: subscribe, unsubscribe (by address or by the link in every email), and
goals reported by the marketer's app. Shared by the web app and the CLI."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from email_validator import EmailNotValidError, validate_email

from nurture.db.store import Store
from nurture.errors import SubscribeError, TokenError
from nurture.journey import Journey
from nurture.sequences import Catalog
from nurture.tokens import Signer, TokenKind
from nurture.vocabulary import EventKind, ExitReason, SubscriberStatus

__all__ = ["SubscribeResult", "Subscriptions", "normalize_email", "clean_fields"]

log = logging.getLogger(__name__)

_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_FIELDS = 50
MAX_FIELD_LENGTH = 1000
RESERVED = {"email", "sequence"}


@dataclass(frozen=True)
class SubscribeResult:
    subscriber_id: int
    enrollment_id: int | None
    created: bool  # False: already in that sequence, nothing changed
    status: SubscriberStatus


def normalize_email(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SubscribeError("an email address is required")
    try:
        # SMTPUTF8 addresses (non-ASCII local parts) are refused: most relays cannot deliver
        # them yet. Non-ASCII domains are kept in their ASCII (IDNA) form.
        info = validate_email(value.strip(), check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise SubscribeError(f"{value.strip()!r} is not a valid email address: {exc}") from None
    return str(info.ascii_email or info.normalized).lower()


def clean_fields(raw: dict[str, Any]) -> dict[str, str]:
    fields = {}
    for key, value in raw.items():
        if key in RESERVED:
            continue
        if not _FIELD_NAME.match(key):
            raise SubscribeError(f"field name {key!r} must be letters, digits and '_' (at most 64)")
        if value is None:
            continue
        text = str(value).strip()
        if len(text) > MAX_FIELD_LENGTH:
            raise SubscribeError(f"field {key!r} is longer than {MAX_FIELD_LENGTH} characters")
        fields[key] = text
    if len(fields) > MAX_FIELDS:
        raise SubscribeError(f"at most {MAX_FIELDS} fields")
    return fields


class Subscriptions:
    def __init__(self, *, store: Store, catalog: Catalog, journey: Journey, signer: Signer) -> None:
        self.store = store
        self.catalog = catalog
        self.journey = journey
        self.signer = signer

    def subscribe(
        self,
        *,
        email: object,
        sequence_id: object,
        fields: dict[str, Any],
        now: datetime,
        confirmed: bool = False,
        resubscribe: bool = False,
    ) -> SubscribeResult:
        """Enroll a person in a sequence. Twice is once (new field values are kept); someone
        who left is refused unless ``resubscribe`` (an operator's explicit choice), which
        starts over with a confirmation."""
        address = normalize_email(email)
        sequence = self.catalog.get(str(sequence_id)) if sequence_id else None
        if sequence is None:
            known = ", ".join(sorted(self.catalog.sequences))
            raise SubscribeError(f"unknown sequence {sequence_id!r} (known: {known})", status=404)
        extra = clean_fields(fields)
        with self.store.transaction() as tx:
            sub = tx.subscribers.by_email(address)
            if sub is not None:
                # Lock order: the person's enrollments, then the person (nurture.journey).
                tx.enrollments.of_subscriber(sub.id)
                sub = tx.subscribers.get(sub.id, lock=True)
            if sub is None:
                status = SubscriberStatus.confirmed if confirmed else SubscriberStatus.pending
                sub = tx.subscribers.create(address, extra, status=status, now=now)
            elif not sub.status.sendable:
                if not resubscribe:
                    raise SubscribeError(
                        f"{address} has {sub.status.value} and is not subscribed again without "
                        "their new consent (operators: nurture subscribe --resubscribe)",
                        status=409,
                    )
                tx.subscribers.merge_fields(sub.id, extra)
                tx.subscribers.set_status(sub.id, SubscriberStatus.pending, now=now)
                sub = tx.subscribers.get(sub.id)
                existing = tx.enrollments.of(sub.id, sequence.id)
                if existing is not None:
                    self.journey.restart(tx, existing, sequence, now=now)
                    log.info(
                        "%s resubscribed to %s",
                        address,
                        sequence.id,
                        extra={"action": "resubscribed", "sequence": sequence.id},
                    )
                    return SubscribeResult(sub.id, existing.id, True, sub.status)
            else:
                tx.subscribers.merge_fields(sub.id, extra)
                if confirmed and sub.status is SubscriberStatus.pending:
                    self.journey.confirm(tx, sub.id, now=now)
                sub = tx.subscribers.get(sub.id)
            enrollment_id = self.journey.start(tx, sub, sequence, now=now)
            if enrollment_id is None:
                existing = tx.enrollments.of(sub.id, sequence.id)
                return SubscribeResult(sub.id, existing.id if existing else None, False, sub.status)
        log.info(
            "subscribed %s to %s",
            address,
            sequence.id,
            extra={"action": "subscribed", "sequence": sequence.id, "enrollment_id": enrollment_id},
        )
        return SubscribeResult(sub.id, enrollment_id, True, sub.status)

    def unsubscribe(
        self,
        subscriber_id: int,
        *,
        now: datetime,
        message_id: int | None = None,
        how: str = "link",
    ) -> bool:
        """Stop every enrollment of the subscriber, at once and for good. Idempotent: True only
        when it changed something (someone who bounced or complained stays so)."""
        with self.store.transaction() as tx:
            if not tx.subscribers.get(subscriber_id).status.sendable:
                return False
            stopped = self.journey.stop_person(
                tx,
                subscriber_id,
                status=SubscriberStatus.unsubscribed,
                reason=ExitReason.unsubscribed,
                now=now,
            )
            tx.events.add(
                subscriber_id=subscriber_id,
                message_id=message_id,
                kind=EventKind.unsubscribe,
                outcome=f"stopped:{stopped}",
                detail={"how": how},
                now=now,
            )
        log.info(
            "subscriber %s unsubscribed (%s); %d enrollments stopped",
            subscriber_id,
            how,
            stopped,
            extra={"action": "unsubscribed", "subscriber_id": subscriber_id},
        )
        return True

    def unsubscribe_address(self, email: object, *, now: datetime, how: str = "cli") -> bool:
        address = normalize_email(email)
        with self.store.transaction() as tx:
            sub = tx.subscribers.by_email(address)
        if sub is None:
            raise SubscribeError(f"no subscriber {address}", status=404)
        return self.unsubscribe(sub.id, now=now, how=how)

    def unsubscribe_target(self, token: str) -> tuple[int, str, int]:
        """(subscriber id, email, message id) named by an unsubscribe token; TokenError if
        none."""
        parsed = self.signer.read(token, TokenKind.unsubscribe)
        with self.store.transaction() as tx:
            message = tx.outbox.get(parsed.message_id)
            if message is None:
                raise TokenError("no such message")
            email = tx.subscribers.get(message.subscriber_id).email
            return message.subscriber_id, email, message.id

    def unsubscribe_token(self, token: str, *, now: datetime, how: str) -> str:
        """Unsubscribe the person behind the link of one of their emails (idempotent);
        returns their address."""
        subscriber_id, address, message_id = self.unsubscribe_target(token)
        self.unsubscribe(subscriber_id, now=now, message_id=message_id, how=how)
        return address

    def goal(
        self,
        *,
        email: object,
        event: object,
        now: datetime,
        sequence_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> list[str]:
        """A goal (e.g. a purchase reported by the shop): enrollments whose sequence counts it
        exit as converted. Returns the sequence ids that converted."""
        address = normalize_email(email)
        if not isinstance(event, str) or not event.strip():
            raise SubscribeError('an event name is required, e.g. "purchase"')
        name = event.strip()
        converted = []
        with self.store.transaction() as tx:
            sub = tx.subscribers.by_email(address)
            if sub is None:
                raise SubscribeError(f"no subscriber {address}", status=404)
            for row in tx.enrollments.of_subscriber(sub.id):
                if sequence_id and row.sequence_id != sequence_id:
                    continue
                sequence = self.catalog.get(row.sequence_id)
                if sequence is None or not sequence.counts_as_goal(name):
                    continue
                if self.journey.stop(tx, row.id, ExitReason.converted, now=now):
                    converted.append(row.sequence_id)
                    tx.events.add(
                        subscriber_id=sub.id,
                        enrollment_id=row.id,
                        kind=EventKind.goal,
                        outcome="converted",
                        detail={"event": name, **(detail or {})},
                        now=now,
                    )
            if not converted:
                tx.events.add(
                    subscriber_id=sub.id,
                    kind=EventKind.goal,
                    outcome="recorded",
                    detail={"event": name, **(detail or {})},
                    now=now,
                )
        return converted
