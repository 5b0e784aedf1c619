"""Composing one claimed message: its step's template rendered for its person, with tracked
links, and the bytes that go on the wire (headers, Message-ID and Reply-To derived from the
message row)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from nurture import engine
from nurture.db.messages import OutgoingRow
from nurture.journey import Delivery
from nurture.mail.compose import address_of, compose, list_id
from nurture.mail.dkim import DkimSigner
from nurture.mail.render import Renderer
from nurture.sequences import Catalog
from nurture.tokens import Signer, TokenKind
from nurture.vocabulary import Link

__all__ = ["Composer", "Composed", "NotLoaded"]


class NotLoaded(Exception):
    """The message's sequence, step or reminder is not among the loaded sequences."""


@dataclass(frozen=True)
class Composed:
    """A message rendered and composed: the bytes that go on the wire."""

    id: int
    enrollment_id: int
    sender: str
    recipient: str
    data: bytes
    attempts: int
    unknown_outcomes: int = 0
    # A step's own email: its delivery starts the step's clock (journey.delivered).
    delivery: Delivery | None = None


class Composer:
    def __init__(
        self,
        *,
        catalog: Catalog,
        renderer: Renderer,
        signer: Signer,
        reply_address: str | None = None,
        message_id_domain: str | None = None,
        dkim: DkimSigner | None = None,
        feedback_id: str | None = None,
        bounce_address: str | None = None,
    ) -> None:
        self.catalog = catalog
        self.renderer = renderer
        self.signer = signer
        self.reply_address = reply_address
        self.message_id_domain = message_id_domain
        self.dkim = dkim
        self.feedback_id = feedback_id
        self.bounce_address = bounce_address

    def compose(self, row: OutgoingRow, now: datetime) -> tuple[Composed, str, list[Link]]:
        """Render and compose one claimed message; NotLoaded when its sequence, step or
        reminder is gone; else raises what a template or data can raise."""
        found = self.catalog.locate(row.sequence_id, row.step_id)
        if found is None:
            raise NotLoaded(f"{row.sequence_id}/{row.step_id} is not in the loaded sequences")
        sequence, step = found
        if row.kind.reminder > len(step.reminders):
            raise NotLoaded(f"{row.sequence_id}/{row.step_id} has no {row.kind} any more")
        rendered = self.renderer.render(
            sequence,
            row.step_id,
            row.kind,
            message_id=row.id,
            email=row.email,
            fields=row.fields,
            tags=row.tags,
            variant=row.variant,
        )
        envelope_from = address_of(sequence.sender)
        domain = self.message_id_domain or envelope_from.rpartition("@")[2]
        reply_to = None
        if self.reply_address:
            reply_to = self.reply_address.format(token=self.signer.make(TokenKind.reply, row.id))
        data = compose(
            sender=sequence.sender,
            to=row.email,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            message_id=self.signer.message_id(row.id, domain or "nurture.local"),
            date=now,
            unsubscribe_url=rendered.unsubscribe_url,
            reply_to=reply_to,
            list_id=list_id(sequence.name, sequence.id, envelope_from.rpartition("@")[2]),
            feedback_id=self.feedback_id,
        )
        if self.dkim is not None:
            data = self.dkim.sign(data, sender_domain=envelope_from.rpartition("@")[2])
        delivery = None
        if row.kind.is_step:
            clock = engine.delivery_clock(step)
            delivery = Delivery(row.enrollment_id, row.step_id, row.visit, clock)
        if self.bounce_address:
            # VERP: a bounce sent to this address names its message even when the report
            # carries none of the original's headers.
            token = self.signer.make(TokenKind.bounce, row.id)
            envelope_from = self.bounce_address.format(token=token)
        composed = Composed(
            row.id,
            row.enrollment_id,
            envelope_from,
            row.email,
            data,
            row.attempts,
            row.unknown_outcomes,
            delivery,
        )
        return composed, rendered.subject, rendered.links
