"""Joining and leaving: subscribe (and enter a sequence again where it allows), unsubscribe (by
address or by the link in every email), and leave one sequence. Shared by the web app, the
API, the CLI and imports."""

from __future__ import annotations

import logging
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nurture.db.enrollments import EnrollmentRow
from nurture.db.store import Store, Tx
from nurture.db.subscribers import SubscriberRow
from nurture.errors import SubscribeError, SubscribeRefused, TokenError
from nurture.journey import Journey
from nurture.people import clean_fields, clean_tags, normalize_email
from nurture.sequences import Catalog, Sequence
from nurture.tokens import Signer, TokenKind
from nurture.vocabulary import EventKind, ExitReason, SubscriberStatus

__all__ = ["SubscribeResult", "Subscriptions", "normalize_email", "reentry"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubscribeResult:
    subscriber_id: int
    enrollment_id: int | None
    created: bool  # False: already in that sequence, nothing changed
    status: SubscriberStatus
    # enrolled, reentered, already_enrolled; from the form, for a person known already:
    # consent_asked (the sequence's confirmation is sent), not_entered (it has none)
    outcome: str = "enrolled"
    # A pending person with a confirmation email on its way (double opt-in); a pending person
    # without one is held, nothing sent, until they confirm.
    confirming: bool = False


def reentry(sequence: Sequence, enrollment: EnrollmentRow, *, now: datetime) -> str | None:
    """None when a person whose ``enrollment`` in ``sequence`` finished may start it again
    now; else the reason they may not (for operators, never shown to the public)."""
    state = enrollment.state
    why = (
        f"completed {sequence.id}"
        if state.exit_reason is None
        else (f"left {sequence.id} ({state.exit_reason.value})")
    )
    rule = sequence.reenter
    if state.exit_reason is not None and not state.exit_reason.may_reenter:
        return f"{why}: never entered again without their new consent"
    if rule.mode == "never":
        return f"{why}, which takes nobody back (reenter: never)"
    if rule.mode == "after" and rule.after is not None:
        since = enrollment.updated_at
        if since is not None and now - since < rule.after:
            return f"{why} on {since:%Y-%m-%d}; {sequence.id} takes people back after {rule.after}"
    return None


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
        tags: Seq[str] = (),
        trusted: bool = True,
    ) -> SubscribeResult:
        """Enroll a person in a sequence. Twice is once (new field values and tags are kept,
        unless the request is not ``trusted``: the public form cannot change what is known
        about an address that is already there, since conditions read it);
        someone who finished the sequence starts it again where its ``reenter:`` allows;
        someone who left is refused (``SubscribeRefused``) unless ``resubscribe`` (an
        operator's explicit choice), which starts over with a confirmation."""
        address = normalize_email(email)
        sequence = self.sequence(sequence_id)
        extra = clean_fields(fields)
        tags = clean_tags(list(tags))
        with self.store.transaction() as tx:
            return self.enroll(
                tx,
                address,
                sequence,
                extra,
                tags,
                now=now,
                confirmed=confirmed,
                resubscribe=resubscribe,
                trusted=trusted,
            )

    def sequence(self, sequence_id: object) -> Sequence:
        sequence = self.catalog.get(str(sequence_id)) if sequence_id else None
        if sequence is None:
            known = ", ".join(sorted(self.catalog.sequences))
            raise SubscribeError(f"unknown sequence {sequence_id!r} (known: {known})", status=404)
        return sequence

    def enroll(
        self,
        tx: Tx,
        address: str,
        sequence: Sequence,
        extra: dict[str, Any],
        tags: Seq[str],
        *,
        now: datetime,
        confirmed: bool = False,
        resubscribe: bool = False,
        trusted: bool = True,
    ) -> SubscribeResult:
        """``subscribe`` inside the caller's transaction, with clean values (an import runs
        many of these in one)."""
        sub = tx.subscribers.by_email(address)
        # A stranger's post (the public form) tags nobody (conditions read tags), changes
        # nothing known about a person who is there, and enters such a person in a sequence
        # only through that sequence's own confirmation (ask_consent).
        if not trusted:
            tags = []
        ask_consent = not trusted and sub is not None
        if sub is not None:
            # Lock order: the person's enrollments, then the person (nurture.journey).
            tx.enrollments.of_subscriber(sub.id)
            sub = tx.subscribers.get(sub.id, lock=True)
            if not trusted:
                extra = {}
        if sub is None:
            status = SubscriberStatus.confirmed if confirmed else SubscriberStatus.pending
            sub = tx.subscribers.create(address, extra, status=status, now=now, tags=tags)
        elif not sub.status.sendable:
            if not resubscribe:
                log.info(
                    "not subscribing %s to %s: %s",
                    address,
                    sequence.id,
                    sub.status.value,
                    extra={"action": "subscribe_refused", "sequence": sequence.id},
                )
                raise SubscribeRefused(
                    f"{address} has {sub.status.value} and is not subscribed again without "
                    "their new consent (operators: nurture subscribe --resubscribe)"
                )
            tx.subscribers.merge_fields(sub.id, extra, tags)
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
                return SubscribeResult(sub.id, existing.id, True, sub.status, "reentered")
        else:
            tx.subscribers.merge_fields(sub.id, extra, tags)
            if confirmed and sub.status is SubscriberStatus.pending:
                self.journey.confirm(tx, sub.id, now=now)
            sub = tx.subscribers.get(sub.id)
        if ask_consent and not sequence.steps[0].confirms:
            existing = tx.enrollments.of(sub.id, sequence.id)
            if existing is None or existing.state.status.finished:
                log.info(
                    "not entering %s in %s from the form: the address is known and %s has no "
                    "confirmation step to ask them with (use the API token or the CLI)",
                    address,
                    sequence.id,
                    sequence.id,
                    extra={"action": "consent_impossible", "sequence": sequence.id},
                )
                return SubscribeResult(sub.id, None, False, sub.status, "not_entered")
        enrollment_id = self.journey.start(tx, sub, sequence, now=now, ask_consent=ask_consent)
        if enrollment_id is None:
            existing = tx.enrollments.of(sub.id, sequence.id)
            assert existing is not None  # the unique key was (person, sequence)
            if existing.state.status.finished:
                return self._reenter(tx, sub, sequence, existing, now=now, ask_consent=ask_consent)
            log.info(
                "%s is in %s already: nothing changed",
                address,
                sequence.id,
                extra={"action": "already_enrolled", "enrollment_id": existing.id},
            )
            return SubscribeResult(sub.id, existing.id, False, sub.status, "already_enrolled")
        if ask_consent:
            log.info(
                "%s, known already, was signed up for %s by the form: its confirmation is "
                "sent, and only its yes enters them",
                address,
                sequence.id,
                extra={
                    "action": "consent_asked",
                    "sequence": sequence.id,
                    "enrollment_id": enrollment_id,
                },
            )
            return SubscribeResult(
                sub.id, enrollment_id, True, sub.status, "consent_asked", confirming=True
            )
        log.info(
            "subscribed %s to %s",
            address,
            sequence.id,
            extra={"action": "subscribed", "sequence": sequence.id, "enrollment_id": enrollment_id},
        )
        return SubscribeResult(
            sub.id, enrollment_id, True, sub.status, confirming=self._confirming(tx, sub)
        )

    def _confirming(self, tx: Tx, sub: SubscriberRow) -> bool:
        """Whether a pending person has an enrollment at a confirmation step (its email is
        due or sent), so that what the form says is true."""
        if sub.status is not SubscriberStatus.pending:
            return False
        # Read without locks: the person may be locked already (created by a concurrent
        # request), and enrollments are never locked after the person.
        for row in tx.enrollments.of_subscriber(sub.id, locked=False):
            found = self.catalog.locate(row.sequence_id, row.state.step_id)
            if found is not None and found[1].confirms and not row.state.status.finished:
                return True
        return False

    def _reenter(
        self,
        tx: Tx,
        sub: SubscriberRow,
        sequence: Sequence,
        existing: EnrollmentRow,
        *,
        now: datetime,
        ask_consent: bool = False,
    ) -> SubscribeResult:
        refused = reentry(sequence, existing, now=now)
        if refused is not None:
            log.info(
                "not entering %s in %s again: %s",
                sub.email,
                sequence.id,
                refused,
                extra={"action": "reentry_refused", "enrollment_id": existing.id},
            )
            raise SubscribeRefused(f"{sub.email} {refused}")
        self.journey.reenter(tx, existing, sequence, sub, now=now, ask_consent=ask_consent)
        tx.events.add(
            subscriber_id=sub.id,
            enrollment_id=existing.id,
            kind=EventKind.entered,
            outcome="reentered",
            detail={"sequence": sequence.id, "before": existing.state.exit_reason or "completed"},
            now=now,
        )
        log.info(
            "%s entered %s again",
            sub.email,
            sequence.id,
            extra={"action": "reentered", "enrollment_id": existing.id},
        )
        return SubscribeResult(sub.id, existing.id, True, sub.status, "reentered")

    def remove(self, *, email: object, sequence_id: object, now: datetime) -> bool:
        """End one enrollment (ExitReason.removed) without unsubscribing the person from the
        rest; its mail not sent yet is cancelled. False if it had finished already."""
        address = normalize_email(email)
        sequence = self.sequence(sequence_id)
        with self.store.transaction() as tx:
            sub = tx.subscribers.by_email(address)
            row = tx.enrollments.of(sub.id, sequence.id) if sub is not None else None
            if sub is None or row is None:
                raise SubscribeError(f"{address} is not in {sequence.id}", status=404)
            tx.enrollments.of_subscriber(sub.id)  # lock order, as everywhere
            removed = self.journey.stop(tx, row.id, ExitReason.removed, now=now)
            if removed:
                tx.events.add(
                    subscriber_id=sub.id,
                    enrollment_id=row.id,
                    kind=EventKind.removed,
                    outcome="removed",
                    detail={"sequence": sequence.id},
                    now=now,
                )
        return removed

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
