"""Composing the bytes of one email: multipart/alternative with the headers every message has."""

from __future__ import annotations

from datetime import datetime
from email.charset import QP, Charset
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, getaddresses, parseaddr

__all__ = ["compose", "address_of"]

_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP
_UTF8_QP.header_encoding = QP


def address_of(display: str) -> str:
    """The bare address of ``Name <addr>``."""
    return parseaddr(display)[1]


def _header(value: str) -> str | Header:
    return value if value.isascii() else Header(value, "utf-8")


def _from_header(sender: str) -> str:
    ((name, addr),) = getaddresses([sender])
    if not name:
        return addr
    if name.isascii():
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}" <{addr}>'
    return f"{Header(name, 'utf-8').encode()} <{addr}>"


def compose(
    *,
    sender: str,
    to: str,
    subject: str,
    text: str,
    html: str,
    message_id: str,
    date: datetime,
    unsubscribe_url: str,
    reply_to: str | None = None,
) -> bytes:
    msg = MIMEMultipart("alternative")
    msg["From"] = _from_header(sender)
    msg["To"] = to
    msg["Subject"] = _header(subject)  # type: ignore[assignment]  # a Header is accepted
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    if reply_to:
        msg["Reply-To"] = reply_to
    # RFC 8058: an https URL and the one-click POST marker, on every message.
    msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.attach(MIMEText(text, "plain", _UTF8_QP))  # type: ignore[arg-type]  # stubs say str
    msg.attach(MIMEText(html, "html", _UTF8_QP))  # type: ignore[arg-type]
    return msg.as_bytes()
