"""The inbox: every inbound message, from any path (the ``POST /inbound`` webhook, the IMAP
mailbox, the outbox's reply form), recognised once and acted on.

Each message is deduplicated on its identity and classified (``nurture.mail.classify``); a
person's reply to the current step is the micro-yes; an out-of-office moves the wait to the
return date; a permanent bounce or an abuse report stops the person's mail, when it references
an email we sent to that person (any other is kept as an unmatched report and changes nobody);
what cannot be read is set aside, visible in ``nurture inbound``, and never blocks the messages
after it.
``poll`` reads the IMAP mailbox (``nurture.mail.imap`` speaks the protocol).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime

from nurture.clock import Clock
from nurture.db.messages import MessageRow
from nurture.db.store import Store, Tx
from nurture.errors import TokenError
from nurture.journey import Journey
from nurture.mail.classify import Classification, InboundKind
from nurture.mail.imap import ImapFolder, ImapMailbox
from nurture.mail.inbound import MAX_INBOUND_BYTES, InboundMail, parse_inbound
from nurture.sequences import Catalog
from nurture.tokens import Signer, TokenKind
from nurture.vocabulary import (
    EnrollmentStatus,
    EventKind,
    ExitReason,
    InboundSource,
    InboundStatus,
    Phase,
    SubscriberStatus,
    YesBy,
)

__all__ = ["Inbox", "InboundResult"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboundResult:
    status: InboundStatus
    outcome: str = ""
    message_id: int | None = None


# What a report does to the people it is about: (subscriber status, exit reason, event outcome).
_STOPS = {
    InboundKind.bounce: (SubscriberStatus.bounced, ExitReason.bounced, "bounced"),
    InboundKind.complaint: (SubscriberStatus.complained, ExitReason.complained, "unsubscribed"),
}
_REPORTS = (InboundKind.bounce, InboundKind.delay, InboundKind.complaint, InboundKind.report)


@dataclass(kw_only=True)
class Inbox:
    store: Store
    catalog: Catalog
    journey: Journey
    signer: Signer
    reply_address: str | None = None  # e.g. replies+{token}@acme.example
    bounce_address: str | None = None  # e.g. bounces+{token}@acme.example (VERP)
    max_bytes: int = MAX_INBOUND_BYTES

    def __post_init__(self) -> None:
        pattern = self.reply_address
        self._reply_pattern = _reply_regex(pattern) if pattern else None
        bounce = self.bounce_address
        self._bounce_pattern = _reply_regex(bounce) if bounce else None

    def _verp(self, tx: Tx, mail: InboundMail) -> MessageRow | None:
        """The message whose envelope sender (VERP) a report was sent back to."""
        if self._bounce_pattern is None:
            return None
        for address in mail.recipients:
            found = self._bounce_pattern.fullmatch(address)
            if found is None:
                continue
            try:
                token = self.signer.read(found.group(1), TokenKind.bounce)
            except TokenError:
                continue
            message = tx.outbox.get(token.message_id)
            if message is not None:
                return message
        return None

    def receive(
        self, raw: bytes, *, now: datetime, source: InboundSource, trusted: bool = False
    ) -> InboundResult:
        """Handle one inbound message. ``trusted`` (IMAP, or a webhook whose shared secret was
        checked) also allows matching by the sender's address; otherwise only a token or a
        Message-ID nurture signed can tie a message to anyone."""
        try:
            mail = parse_inbound(raw, today=now.date(), max_bytes=self.max_bytes)
        except ValueError as exc:
            return self.set_aside(raw, str(exc), now=now, source=source)
        kind = mail.classification.kind
        with self.store.transaction() as tx:
            inbound_id = tx.inbound.record(
                digest=mail.identity,
                header_message_id=mail.message_id,
                sender=mail.sender,
                now=now,
                source=source,
                kind=kind.value,
            )
            if inbound_id is None:
                return InboundResult(InboundStatus.duplicate)
            if kind in _REPORTS:
                result = self._report(tx, mail, now=now)
            else:
                result = self._reply(tx, mail, now=now, source=source, trusted=trusted)
            # A report that matched nothing is kept whole: a real one whose relay dropped our
            # headers can be read (nurture inbound --raw) and acted on by hand.
            unmatched_report = kind in _REPORTS and result.status is InboundStatus.unmatched
            tx.inbound.finish(
                inbound_id,
                status=result.status,
                matched=result.message_id,
                note=result.outcome,
                raw=raw if unmatched_report else None,
            )
        if unmatched_report:
            log.warning(
                "inbound %s from %s matched no email we sent; nobody changed: %s",
                kind.value,
                source.value,
                result.outcome,
                extra={"action": "report_unmatched", "kind": kind.value},
            )
            return result
        log.info(
            "inbound %s from %s: %s %s",
            kind.value,
            source.value,
            result.status.value,
            result.outcome,
            extra={"action": "inbound", "kind": kind.value, "status": result.status.value},
        )
        return result

    def set_aside(
        self,
        raw: bytes,
        why: str,
        *,
        now: datetime,
        source: InboundSource,
        identity: str | None = None,
    ) -> InboundResult:
        """Keep what cannot be read (capped), visible in `nurture inbound`; never raise.
        ``identity`` names a message whose bytes are not kept (its hash is stored)."""
        log.warning(
            "inbound message from %s set aside: %s",
            source.value,
            why,
            extra={"action": "inbound_malformed"},
        )
        digest = hashlib.sha256(identity.encode() if identity is not None else raw).hexdigest()
        with self.store.transaction() as tx:
            tx.inbound.record(
                digest=digest,
                header_message_id=None,
                sender=None,
                now=now,
                source=source,
                status=InboundStatus.malformed,
                raw=raw[: self.max_bytes] or None,
                note=why,
            )
        return InboundResult(InboundStatus.malformed, why)

    # -- the IMAP mailbox ----------------------------------------------------------------

    def poll(self, mailbox: ImapMailbox, *, clock: Clock, batch: int = 200) -> int:
        """Handle every message of the mailbox's folder not handled yet (by UID, remembered
        per folder and UIDVALIDITY); returns how many. A crash between handling a message
        and remembering its UID only means it is fetched again: ``receive`` recognises it."""
        with mailbox.open() as folder:
            with self.store.transaction() as tx:
                last = tx.mailboxes.last_uid(folder.name, folder.uidvalidity)
            handled = 0
            for uid in folder.uids_after(last)[:batch]:
                self._take(folder, uid, now=clock.now())
                with self.store.transaction() as tx:
                    tx.mailboxes.set_last_uid(folder.name, folder.uidvalidity, uid, now=clock.now())
                handled += 1
            folder.finish()
        return handled

    def _take(self, folder: ImapFolder, uid: int, *, now: datetime) -> None:
        size = folder.size(uid)
        if size > self.max_bytes:
            # Far too large to be a reply. Its bytes are not kept, so it stays on the server
            # as it is (not flagged, moved or deleted) for a person to look at.
            self.set_aside(
                b"",
                f"IMAP {folder.name} UID {uid}: {size} bytes, over {self.max_bytes}; "
                "left on the server untouched",
                now=now,
                source=InboundSource.imap,
                identity=f"imap:{folder.name}:{folder.uidvalidity}:{uid}:{size}",
            )
            return
        raw = folder.fetch(uid)
        try:
            result = self.receive(raw, now=now, source=InboundSource.imap, trusted=True)
            log.debug("IMAP UID %s: %s", uid, result.status.value)
        except Exception as exc:  # noqa: BLE001 - one message must never block the rest
            log.exception("IMAP UID %s could not be handled; set aside", uid)
            self.set_aside(
                raw,
                f"could not be handled: {type(exc).__name__}: {exc}",
                now=now,
                source=InboundSource.imap,
            )
        folder.mark_handled(uid)

    # -- replies -------------------------------------------------------------------------

    def _reply(
        self, tx: Tx, mail: InboundMail, *, now: datetime, source: InboundSource, trusted: bool
    ) -> InboundResult:
        message, how = self._match(tx, mail, trusted=trusted)
        if message is None:
            return InboundResult(
                InboundStatus.unmatched, "no token, known Message-ID or waiting sender"
            )
        c = mail.classification
        if c.kind is InboundKind.auto_reply:
            status = InboundStatus.automatic
            outcome = f"ignored:automatic ({c.reason})"
            if c.return_date is not None:
                outcome = self.journey.extend(tx, message, c.return_date, now=now)
        else:
            status = InboundStatus.matched
            outcome = self.journey.answer(tx, message, YesBy.reply, now=now)
        tx.events.add(
            subscriber_id=message.subscriber_id,
            enrollment_id=message.enrollment_id,
            message_id=message.id,
            kind=EventKind.reply if c.kind is InboundKind.human else EventKind.auto_reply,
            outcome=outcome,
            detail={
                "matched_by": how,
                "source": source.value,
                "subject": mail.subject[:200],
                "why": c.reason,
                "back": c.return_date.isoformat() if c.return_date else None,
            },
            now=now,
        )
        return InboundResult(status, outcome, message.id)

    def _match(self, tx: Tx, mail: InboundMail, *, trusted: bool) -> tuple[MessageRow | None, str]:
        if self._reply_pattern is not None:
            for address in mail.recipients:
                found = self._reply_pattern.fullmatch(address)
                if not found:
                    continue
                try:
                    token = self.signer.read(found.group(1), TokenKind.reply)
                except TokenError:
                    continue
                message = tx.outbox.get(token.message_id)
                if message is not None:
                    return message, "reply_address"
        for header_id in mail.in_reply_to:
            number = self.signer.read_message_id(header_id)
            if number is not None and (message := tx.outbox.get(number)) is not None:
                return message, "in_reply_to"
        if trusted and mail.sender:
            return self._match_sender(tx, mail.sender), "sender_address"
        return None, ""

    def _match_sender(self, tx: Tx, sender: str) -> MessageRow | None:
        """Last resort: the sender's address, when exactly one of their enrollments waits for
        a reply (headers rewritten or stripped and no reply address configured)."""
        sub = tx.subscribers.by_email(sender)
        if sub is None:
            return None
        candidates = []
        for row in tx.enrollments.of_subscriber(sub.id):
            state = row.state
            if state.status is not EnrollmentStatus.active or state.phase is not Phase.wait:
                continue
            found = self.catalog.locate(row.sequence_id, state.step_id)
            if found is None or not found[1].advance_on.accepts(YesBy.reply):
                continue
            message = tx.outbox.step_email(row.id, state.visit)
            if message is not None:
                candidates.append(message)
        if len(candidates) != 1:
            return None
        log.warning(
            "reply from %s matched by its sender address alone (last resort)",
            sender,
            extra={"action": "reply_matched_by_sender", "message_id": candidates[0].id},
        )
        return candidates[0]

    # -- reports -------------------------------------------------------------------------

    def _referenced(self, tx: Tx, mail: InboundMail) -> dict[int, tuple[MessageRow, str]]:
        """The emails of ours a report points at, each with how: the signed VERP address it
        was sent back to, our signed Message-ID in the returned headers, an
        Original-Message-ID field, or In-Reply-To/References. Nothing else ties a report to
        anyone: a report is as easy to forge as any email."""
        found: dict[int, tuple[MessageRow, str]] = {}
        verp = self._verp(tx, mail)
        if verp is not None:
            found[verp.id] = (verp, "verp")
        for header_id in mail.classification.original_ids + mail.in_reply_to:
            number = self.signer.read_message_id(header_id)
            if number is not None and number not in found:
                row = tx.outbox.get(number)
                if row is not None:
                    found[number] = (row, "message_id")
        return found

    def _report(self, tx: Tx, mail: InboundMail, *, now: datetime) -> InboundResult:
        """A delivery or an abuse report acts only on what we sent: each address it names
        counts when one of the emails it references went to that address; an address named
        alongside is not ours to touch. A report that matches nobody is kept, with why, and
        stops nobody: the replies mailbox is every email's Reply-To, so anyone who got one
        email can send it a "report" from any sender naming any list of addresses."""
        c = mail.classification
        referenced = self._referenced(tx, mail)
        sent_to: dict[str, tuple[MessageRow, str]] = {}
        for message, how in referenced.values():
            address = tx.subscribers.get(message.subscriber_id).email.lower()
            sent_to.setdefault(address, (message, how))
        if c.kind is InboundKind.report:
            first = next(iter(referenced.values()), None)
            if first is not None:
                self._event(tx, first[0], c, how=first[1], outcome="recorded", now=now)
            return InboundResult(
                InboundStatus.report, f"recorded: {c.reason}", first[0].id if first else None
            )
        named = _named(c)
        if named:
            matched = {a: sent_to[a] for a in named if a in sent_to}
        else:
            # An abuse report whose recipient was redacted: our signed reference alone
            # says whom, as long as it says one person.
            matched = dict(sent_to) if len(sent_to) == 1 else {}
        if not matched:
            why = _unmatched_why(c.kind, named, referenced)
            return InboundResult(InboundStatus.unmatched, why)
        others = [a for a in named if a not in matched]
        for message, how in matched.values():
            if c.kind in _STOPS:
                subscriber_status, reason, outcome = _STOPS[c.kind]
                self.journey.stop_person(
                    tx, message.subscriber_id, status=subscriber_status, reason=reason, now=now
                )
            else:
                outcome = "recorded"
            self._event(tx, message, c, how=how, outcome=outcome, now=now)
        done = _STOPS[c.kind][0].value if c.kind in _STOPS else "recorded"
        note = f"{done}: {', '.join(sorted(matched))}"
        if others:
            note += f"; not the recipient of an email it references: {_some(others)}"
        first_message = next(iter(matched.values()))[0]
        return InboundResult(InboundStatus(c.kind.value), note, first_message.id)

    @staticmethod
    def _event(
        tx: Tx, message: MessageRow, c: Classification, *, how: str, outcome: str, now: datetime
    ) -> None:
        tx.events.add(
            subscriber_id=message.subscriber_id,
            message_id=message.id,
            kind=EventKind(c.kind.value),
            outcome=outcome,
            detail={"why": c.reason, "matched_by": how},
            now=now,
        )


def _named(c: Classification) -> tuple[str, ...]:
    """The recipients a report is about: a DSN's failed ones (Final-Recipient, or
    Original-Recipient where given), an abuse report's Original-Rcpt-To, else the returned
    copy's To."""
    if c.kind is InboundKind.bounce:
        return c.permanent
    if c.kind is InboundKind.delay:
        return c.temporary
    if c.complainant:
        return (c.complainant,)
    return c.returned_to


def _some(addresses: list[str] | tuple[str, ...], shown: int = 5) -> str:
    more = len(addresses) - shown
    return ", ".join(addresses[:shown]) + (f" (and {more} more)" if more > 0 else "")


def _unmatched_why(
    kind: InboundKind, named: tuple[str, ...], referenced: dict[int, tuple[MessageRow, str]]
) -> str:
    about = f"{kind.value} naming {_some(named)}" if named else f"{kind.value} naming nobody"
    if not referenced:
        return f"{about}: references no email we sent (no VERP address, no Message-ID of ours)"
    ids = ", ".join(str(n) for n in referenced)
    if not named:
        return f"{about}: references emails to more than one person (messages {ids})"
    return f"{about}: not the recipient of the email it references (message {ids})"


def _reply_regex(pattern: str) -> re.Pattern[str]:
    before, _, after = pattern.lower().partition("{token}")
    return re.compile(re.escape(before) + r"([a-z2-7]{10,64})" + re.escape(after))
