"""Tracking: turning what a recipient does (a click, an unsubscribe, a reply) into an event,
and a micro-yes into the engine's decision. No HTTP types here: the web app and the outbox
reply form call these functions with plain values.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nurture import engine
from nurture.db.store import MessageRow, Store, Tx
from nurture.errors import TokenError
from nurture.mail.inbound import InboundMail, parse_inbound
from nurture.sequences import Catalog
from nurture.subscriptions import unsubscribe
from nurture.tokens import Signer, TokenKind

__all__ = ["Tracker", "InboundResult"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboundResult:
    status: str  # duplicate, malformed, automatic, unmatched, matched
    outcome: str = ""
    message_id: int | None = None


class Tracker:
    def __init__(
        self, *, store: Store, catalog: Catalog, signer: Signer, reply_address: str | None = None
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.signer = signer
        self._reply_pattern = _reply_regex(reply_address) if reply_address else None

    # -- clicks ----------------------------------------------------------------------------

    def click(
        self,
        token: str,
        *,
        now: datetime,
        detail: dict[str, Any] | None = None,
        may_advance: bool = True,
    ) -> str:
        """Record a click and return the URL stored for that link. TokenError if the token is
        forged or names no stored link (the caller answers 404, never a redirect).
        ``may_advance=False`` records it without letting it be a micro-yes (a HEAD request:
        link checkers and mail scanners, never a person)."""
        parsed = self.signer.read(token, TokenKind.click)
        with self.store.transaction() as tx:
            message = tx.message(parsed.message_id)
            if message is None or not 0 <= parsed.link < len(message.links):
                raise TokenError("no such link")
            url, counts = message.links[parsed.link]
            outcome = "recorded"
            if counts and not may_advance:
                outcome = "ignored:not_a_person"
            elif counts:
                outcome = self._yes(tx, message, "click", now=now)
            tx.add_event(
                subscriber_id=message.subscriber_id,
                enrollment_id=message.enrollment_id,
                message_id=message.id,
                kind="click",
                outcome=outcome,
                detail={"link": parsed.link, "url": url, **(detail or {})},
                now=now,
            )
        return url

    def _yes(self, tx: Tx, message: MessageRow, kind: str, *, now: datetime) -> str:
        enrollment = tx.enrollment_for_update(message.enrollment_id)
        sequence = self.catalog.get(enrollment.sequence_id)
        if sequence is None or not sequence.has_step(enrollment.state.step_id):
            return "ignored:sequence_not_loaded"
        decision = engine.on_yes(
            enrollment.state, sequence, engine.Yes(kind, message.step_id, message.visit), now=now
        )
        if decision.state != enrollment.state or decision.actions:
            tx.apply(enrollment, decision, now=now)
            log.info(
                "enrollment %s: %s by %s on %s",
                enrollment.id,
                decision.outcome,
                kind,
                message.step_id,
                extra={
                    "action": "micro_yes",
                    "enrollment_id": enrollment.id,
                    "outcome": decision.outcome,
                },
            )
        return decision.outcome

    # -- unsubscribe -----------------------------------------------------------------------

    def unsubscribe_target(self, token: str) -> tuple[int, str]:
        """(subscriber id, email) named by an unsubscribe token; TokenError if none."""
        parsed = self.signer.read(token, TokenKind.unsubscribe)
        with self.store.transaction() as tx:
            message = tx.message(parsed.message_id)
            if message is None:
                raise TokenError("no such message")
            return message.subscriber_id, tx.subscriber(message.subscriber_id).email

    def unsubscribe(self, token: str, *, now: datetime, how: str) -> str:
        """Unsubscribe the person behind the token (idempotent); returns their address."""
        subscriber_id, address = self.unsubscribe_target(token)
        message_id = self.signer.read(token, TokenKind.unsubscribe).message_id
        unsubscribe(self.store, subscriber_id, now=now, message_id=message_id, how=how)
        return address

    # -- replies ---------------------------------------------------------------------------

    def receive(self, raw: bytes, *, now: datetime, source: str) -> InboundResult:
        """One inbound message (webhook, outbox reply form, later IMAP): dedupe, match, and
        count it as a micro-yes when it is a human reply to the current step's email."""
        try:
            mail = parse_inbound(raw)
        except ValueError as exc:
            log.warning(
                "inbound message from %s set aside: %s",
                source,
                exc,
                extra={"action": "inbound_malformed"},
            )
            return InboundResult("malformed", str(exc))
        with self.store.transaction() as tx:
            inbound_id = tx.record_inbound(
                digest=mail.digest, header_message_id=mail.message_id, sender=mail.sender, now=now
            )
            if inbound_id is None:
                return InboundResult("duplicate")
            message, how = self._match(tx, mail)
            if message is None:
                tx.finish_inbound(
                    inbound_id,
                    status="unmatched",
                    matched=None,
                    note="no token or known Message-ID",
                )
                return InboundResult("unmatched")
            if mail.automatic:
                outcome = f"ignored:automatic:{mail.automatic}"
                status = "automatic"
            else:
                outcome = self._yes(tx, message, "reply", now=now)
                status = "matched"
            tx.add_event(
                subscriber_id=message.subscriber_id,
                enrollment_id=message.enrollment_id,
                message_id=message.id,
                kind="reply",
                outcome=outcome,
                detail={"matched_by": how, "source": source, "subject": mail.subject[:200]},
                now=now,
            )
            tx.finish_inbound(
                inbound_id, status=status, matched=message.id, note=f"matched by {how}: {outcome}"
            )
        return InboundResult(status, outcome, message.id)

    def _match(self, tx: Tx, mail: InboundMail) -> tuple[MessageRow | None, str]:
        if self._reply_pattern is not None:
            for address in mail.recipients:
                found = self._reply_pattern.fullmatch(address)
                if not found:
                    continue
                try:
                    token = self.signer.read(found.group(1), TokenKind.reply)
                except TokenError:
                    continue
                message = tx.message(token.message_id)
                if message is not None:
                    return message, "reply_address"
        for header_id in mail.in_reply_to:
            number = self.signer.read_message_id(header_id)
            if number is not None:
                message = tx.message(number)
                if message is not None:
                    return message, "in_reply_to"
        return None, ""


def _reply_regex(pattern: str) -> re.Pattern[str]:
    before, _, after = pattern.lower().partition("{token}")
    return re.compile(re.escape(before) + r"([a-z2-7]{10,64})" + re.escape(after))
