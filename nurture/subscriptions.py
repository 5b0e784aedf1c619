"""Joining and leaving: subscribe, unsubscribe, goals. Shared by the web app and the CLI."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from email_validator import EmailNotValidError, validate_email

from nurture import engine
from nurture.db.store import Store
from nurture.engine import ExitReason
from nurture.errors import SubscribeError
from nurture.sequences import Catalog

__all__ = ["SubscribeResult", "normalize_email", "clean_fields", "subscribe", "unsubscribe", "goal"]

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
    status: str  # the subscriber's status


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


def subscribe(
    store: Store,
    catalog: Catalog,
    *,
    email: object,
    sequence_id: object,
    fields: dict[str, Any],
    now: datetime,
    confirmed: bool = False,
    resubscribe: bool = False,
) -> SubscribeResult:
    """Enroll a person in a sequence. Twice is once; an unsubscribed person is refused unless
    ``resubscribe`` (an operator's explicit choice), which starts over with a confirmation."""
    address = normalize_email(email)
    sequence = catalog.get(str(sequence_id)) if sequence_id else None
    if sequence is None:
        known = ", ".join(sorted(catalog.sequences))
        raise SubscribeError(f"unknown sequence {sequence_id!r} (known: {known})", status=404)
    extra = clean_fields(fields)
    with store.transaction() as tx:
        sub = tx.subscriber_by_email(address, lock=True)
        if sub is None:
            sub = tx.create_subscriber(
                address, extra, status="confirmed" if confirmed else "pending", now=now
            )
        elif sub.status not in ("pending", "confirmed"):
            if not resubscribe:
                raise SubscribeError(
                    f"{address} has {sub.status} and is not subscribed again without their "
                    "new consent (operators: nurture subscribe --resubscribe)",
                    status=409,
                )
            tx.update_subscriber(sub.id, fields=extra, status="pending", now=now)
            sub = tx.subscriber(sub.id)
            existing = tx.enrollment_of(sub.id, sequence.id)
            if existing is not None:
                fresh = engine.start(sequence, now=now, confirmed=False)
                restarted = replace(fresh, visit=existing.state.visit + 1)
                tx.apply(existing, engine.Decision(restarted), now=now)
                log.info(
                    "%s resubscribed to %s",
                    address,
                    sequence.id,
                    extra={"action": "resubscribed", "sequence": sequence.id},
                )
                return SubscribeResult(sub.id, existing.id, True, sub.status)
        else:
            if extra:
                tx.update_subscriber(sub.id, fields=extra, now=now)
            if confirmed and sub.status == "pending":
                tx.confirm_subscriber(sub.id, now=now)
            sub = tx.subscriber(sub.id)
        state = engine.start(sequence, now=now, confirmed=sub.confirmed)
        enrollment_id = tx.create_enrollment(sub.id, sequence.id, state, now=now)
        if enrollment_id is None:
            existing = tx.enrollment_of(sub.id, sequence.id)
            return SubscribeResult(sub.id, existing.id if existing else None, False, sub.status)
    log.info(
        "subscribed %s to %s",
        address,
        sequence.id,
        extra={"action": "subscribed", "sequence": sequence.id, "enrollment_id": enrollment_id},
    )
    return SubscribeResult(sub.id, enrollment_id, True, sub.status)


def unsubscribe(
    store: Store,
    subscriber_id: int,
    *,
    now: datetime,
    message_id: int | None = None,
    how: str = "link",
) -> bool:
    """Stop every enrollment of the subscriber, at once and for good. Idempotent: True only
    the first time."""
    with store.transaction() as tx:
        sub = tx.subscriber(subscriber_id)
        if sub.status == "unsubscribed":
            return False
        stopped = tx.stop_subscriber(
            subscriber_id, status="unsubscribed", reason=ExitReason.unsubscribed, now=now
        )
        tx.add_event(
            subscriber_id=subscriber_id,
            message_id=message_id,
            kind="unsubscribe",
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


def goal(
    store: Store,
    catalog: Catalog,
    *,
    email: object,
    event: object,
    now: datetime,
    sequence_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> list[str]:
    """A goal (e.g. a purchase reported by the shop): enrollments whose sequence counts it exit
    as converted. Returns the sequence ids that converted."""
    address = normalize_email(email)
    if not isinstance(event, str) or not event.strip():
        raise SubscribeError('an event name is required, e.g. "purchase"')
    name = event.strip()
    converted = []
    with store.transaction() as tx:
        sub = tx.subscriber_by_email(address)
        if sub is None:
            raise SubscribeError(f"no subscriber {address}", status=404)
        for row in tx.enrollments_of_subscriber(sub.id):
            sequence = catalog.get(row.sequence_id)
            if sequence_id and row.sequence_id != sequence_id:
                continue
            if sequence is None or not sequence.counts_as_goal(name):
                continue
            if tx.stop_enrollment(row.id, ExitReason.converted, now=now):
                converted.append(row.sequence_id)
                tx.add_event(
                    subscriber_id=sub.id,
                    enrollment_id=row.id,
                    kind="goal",
                    outcome="converted",
                    detail={"event": name, **(detail or {})},
                    now=now,
                )
        if not converted:
            tx.add_event(
                subscriber_id=sub.id,
                kind="goal",
                outcome="recorded",
                detail={"event": name, **(detail or {})},
                now=now,
            )
    return converted
