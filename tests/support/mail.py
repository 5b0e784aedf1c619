"""Reading caught emails as a person does, and writing the answers people and machines send."""

from __future__ import annotations

import re
from email.message import EmailMessage
from email.utils import make_msgid

from support.smtp import Caught

_ANCHOR = re.compile(r'<a href="(https?://[^"]+/c/[^"]+)"([^>]*)>')


def visible_links(html: str) -> list[str]:
    """The tracked links a person can see (not the hidden honeypot link)."""
    return [url for url, rest in _ANCHOR.findall(html) if "display:none" not in rest]


def reply(
    to: Caught,
    body: str = "Yes please!",
    *,
    threaded: bool = True,
    references: bool = False,
    **headers: str,
) -> bytes:
    """A person's reply to ``to``: to its Reply-To (else From), In-Reply-To its Message-ID
    (unless ``threaded=False``: a provider that stripped the thread headers). Extra headers
    are given as keyword arguments, ``_`` for ``-`` (``Auto_Submitted="auto-replied"``);
    ``Subject`` replaces the "Re: ..." subject."""
    msg = EmailMessage()
    msg["From"] = to.recipient
    msg["To"] = to.message["Reply-To"] or to.message["From"]
    msg["Subject"] = headers.pop("Subject", "Re: " + to.subject)
    msg["Message-ID"] = make_msgid(domain="mail.example.com")
    if threaded:
        msg["In-Reply-To"] = to.message["Message-ID"]
    if references:
        msg["References"] = to.message["Message-ID"]
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    msg.set_content(body)
    return msg.as_bytes()
