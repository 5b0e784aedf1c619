"""Composing the bytes of one email: multipart/alternative with the headers every message has.

Written out directly rather than through ``email.mime``: the standard library's folding and
quoted-printable code cost more per message than the whole SMTP transaction (bench/send.py),
and the shape of our messages is fixed. ``tests/unit/test_render.py`` parses the result back
with the standard library's strict policy.
"""

from __future__ import annotations

import binascii
import re
import secrets
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, getaddresses, parseaddr
from functools import lru_cache

__all__ = ["compose", "address_of"]

_MAX_LINE = 78


@lru_cache(maxsize=256)
def address_of(display: str) -> str:
    """The bare address of ``Name <addr>``."""
    return parseaddr(display)[1]


def _phrase(name: str) -> str:
    """A display name as a header phrase: quoted ASCII, or an encoded word."""
    if name.isascii():
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}"'
    return str(Header(name, "utf-8").encode())


@lru_cache(maxsize=256)
def _from_header(sender: str) -> str:
    ((name, addr),) = getaddresses([sender])
    if not name:
        return addr
    return f"{_phrase(name)} <{addr}>"


@lru_cache(maxsize=4096)
def _subject(subject: str) -> str:
    """The Subject header's value: folded at spaces when ASCII, RFC 2047 words otherwise."""
    if not subject.isascii():
        return Header(subject, "utf-8", header_name="Subject").encode(linesep="\n")
    if len(subject) + 9 <= _MAX_LINE:
        return subject
    lines: list[str] = []
    current = ""
    for word in subject.split(" "):
        if current and len(current) + 1 + len(word) + (9 if not lines else 1) > _MAX_LINE:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return "\n ".join(lines)


def _part(content_type: str, text: str) -> bytes:
    """A body part: plain 7bit when it is ASCII with short lines (no encoding to undo, and the
    cheapest to make), quoted-printable otherwise."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    if text.isascii() and max(map(len, text.split("\n"))) < 999:
        return (
            f'Content-Type: {content_type}; charset="utf-8"\n'
            f"Content-Transfer-Encoding: 7bit\n\n{text}"
        ).encode("ascii")
    head = (
        f'Content-Type: {content_type}; charset="utf-8"\n'
        "Content-Transfer-Encoding: quoted-printable\n\n"
    )
    return head.encode("ascii") + binascii.b2a_qp(text.encode("utf-8"), istext=True)


def list_id(name: str, sequence_id: str, domain: str) -> str:
    """RFC 2919: ``"Name" <sequence.domain>``, one list per sequence (Gmail groups and
    lets people leave by it)."""
    label = re.sub(r"[^A-Za-z0-9-]", "-", sequence_id).strip("-").lower() or "list"
    one_line = " ".join(name.split())
    return f"{_phrase(one_line)} <{label}.{domain or 'nurture.local'}>"


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
    list_id: str | None = None,
    feedback_id: str | None = None,
) -> bytes:
    for value in (to, message_id, unsubscribe_url, reply_to or "", feedback_id or ""):
        if "\n" in value or "\r" in value or not value.isascii():
            raise ValueError(f"header value {value!r} must be one line of ASCII")
    # Quoted-printable never produces "=_"; a 7bit body is checked for the boundary.
    boundary = "=_" + secrets.token_hex(12)
    while boundary in text or boundary in html:  # pragma: no cover - 96 random bits
        boundary = "=_" + secrets.token_hex(12)
    head = [
        f"From: {_from_header(sender)}",
        f"To: {to}",
        f"Subject: {_subject(subject.replace(chr(13), ' ').replace(chr(10), ' '))}",
        f"Date: {format_datetime(date)}",
        f"Message-ID: {message_id}",
    ]
    if reply_to:
        head.append(f"Reply-To: {reply_to}")
    if list_id:
        head.append(f"List-Id: {list_id}")
    if feedback_id:
        head.append(f"Feedback-ID: {feedback_id}")
    head += [
        # RFC 8058: an https URL and the one-click POST marker, on every message.
        f"List-Unsubscribe: <{unsubscribe_url}>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "",
    ]
    # The line break before a boundary belongs to the boundary (RFC 2046 5.1.1).
    return b"".join(
        (
            "\n".join(head).encode("ascii"),
            _part("text/plain", text),
            f"\n--{boundary}\n".encode("ascii"),
            _part("text/html", html),
            f"\n--{boundary}--\n".encode("ascii"),
        )
    )
