"""Reading inbound mail: the parts of a raw RFC 5322 message that matching needs, and what
kind of message it is (nurture.mail.classify).

Both inbound paths (the ``POST /inbound`` webhook and IMAP polling) hand raw bytes to
``parse_inbound``; nothing here decides sequence logic.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from dataclasses import dataclass
from datetime import date
from email.message import EmailMessage
from email.utils import getaddresses

from nurture.mail.classify import Classification, classify

__all__ = ["InboundMail", "parse_inbound", "MAX_INBOUND_BYTES"]

MAX_INBOUND_BYTES = 10 * 1024 * 1024
_MSGID = re.compile(r"<[^<>\s]+>")


@dataclass(frozen=True)
class InboundMail:
    identity: str  # what makes two copies the same message: Message-ID + body, hashed
    message_id: str | None
    sender: str | None
    recipients: tuple[str, ...]  # every address it was sent to (To, Cc, Delivered-To, ...)
    in_reply_to: tuple[str, ...]  # In-Reply-To first, then References newest first
    subject: str
    classification: Classification


def _addresses(msg: EmailMessage, *names: str) -> list[str]:
    values: list[str] = []
    for name in names:
        values.extend(str(v) for v in msg.get_all(name, []))
    return [addr.lower() for _, addr in getaddresses(values) if "@" in addr]


def _identity(raw: bytes, message_id: str | None) -> str:
    """The same message seen twice (an IMAP re-poll, a webhook the provider retries) has the
    same Message-ID and body even when relays added headers in front of it."""
    if not message_id:
        return hashlib.sha256(raw).hexdigest()
    head_end = raw.find(b"\r\n\r\n")
    head_end = raw.find(b"\n\n") if head_end < 0 else head_end
    body = raw[head_end:] if head_end >= 0 else b""
    return hashlib.sha256(message_id.encode("utf-8", "replace") + b"\0" + body).hexdigest()


def parse_inbound(raw: bytes, *, today: date, max_bytes: int = MAX_INBOUND_BYTES) -> InboundMail:
    """Parse and classify raw bytes; raises ValueError when it is not a usable message."""
    if not raw or len(raw) > max_bytes:
        raise ValueError(f"empty or larger than {max_bytes} bytes")
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        if not any(name.lower() in _ENVELOPE for name in msg.keys()):  # noqa: SIM118
            raise ValueError("no From, To or Message-ID header: not an email message")
        in_reply_to = _MSGID.findall(str(msg.get("In-Reply-To", "")))
        references = _MSGID.findall(str(msg.get("References", "")))
        senders = _addresses(msg, "From", "Reply-To")[:1] or _addresses(msg, "Sender")
        recipients = _addresses(msg, "To", "Cc", "Delivered-To", "X-Original-To", "Envelope-To")
        subject = str(msg.get("Subject", ""))
        message_id = str(msg.get("Message-ID", "")).strip() or None
        classification = classify(msg, today=today)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - broken headers or encodings of every kind
        raise ValueError(f"unreadable message: {type(exc).__name__}: {exc}") from exc
    return InboundMail(
        identity=_identity(raw, message_id),
        message_id=message_id,
        sender=senders[0] if senders else None,
        recipients=tuple(recipients),
        in_reply_to=tuple(in_reply_to + list(reversed(references))),
        subject=subject,
        classification=classification,
    )


_ENVELOPE = {"from", "to", "message-id", "subject", "return-path"}
