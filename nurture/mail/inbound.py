"""Reading inbound mail: the parts of a raw RFC 5322 message that reply matching needs.

Both inbound paths (the ``POST /inbound`` webhook and, later, IMAP polling) hand raw bytes to
``parse_inbound``; nothing here decides sequence logic.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses

__all__ = ["InboundMail", "parse_inbound", "MAX_INBOUND_BYTES"]

MAX_INBOUND_BYTES = 10 * 1024 * 1024
_MSGID = re.compile(r"<[^<>\s]+>")


@dataclass(frozen=True)
class InboundMail:
    digest: str
    message_id: str | None
    sender: str | None
    recipients: tuple[str, ...]  # every address it was sent to (To, Cc, Delivered-To, ...)
    in_reply_to: tuple[str, ...]  # In-Reply-To first, then References newest first
    subject: str
    automatic: str | None  # why it is not a human reply (RFC 3834 and friends), else None


def _addresses(msg: EmailMessage, *names: str) -> list[str]:
    values: list[str] = []
    for name in names:
        values.extend(str(v) for v in msg.get_all(name, []))
    return [addr.lower() for _, addr in getaddresses(values) if "@" in addr]


def _automatic(msg: EmailMessage) -> str | None:
    auto = str(msg.get("Auto-Submitted", "")).strip().lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"):
        if msg.get(name) is not None:
            return name
    precedence = str(msg.get("Precedence", "")).strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {precedence}"
    if str(msg.get_content_type()) == "multipart/report":
        return "delivery or feedback report"
    return None


def parse_inbound(raw: bytes) -> InboundMail:
    """Parse raw bytes; raises ValueError when it is not a usable email message."""
    if not raw or len(raw) > MAX_INBOUND_BYTES:
        raise ValueError(f"empty or larger than {MAX_INBOUND_BYTES} bytes")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    if not msg.keys():
        raise ValueError("no headers")
    try:
        in_reply_to = _MSGID.findall(str(msg.get("In-Reply-To", "")))
        references = _MSGID.findall(str(msg.get("References", "")))
        senders = _addresses(msg, "From")
        recipients = _addresses(msg, "To", "Cc", "Delivered-To", "X-Original-To", "Envelope-To")
        subject = str(msg.get("Subject", ""))
        message_id = str(msg.get("Message-ID", "")).strip() or None
    except (ValueError, TypeError, IndexError) as exc:  # broken headers
        raise ValueError(f"unreadable headers: {exc}") from exc
    return InboundMail(
        digest=hashlib.sha256(raw).hexdigest(),
        message_id=message_id,
        sender=senders[0] if senders else None,
        recipients=tuple(recipients),
        in_reply_to=tuple(in_reply_to + list(reversed(references))),
        subject=subject,
        automatic=_automatic(msg),
    )
