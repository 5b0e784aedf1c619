"""Delivery reports (RFC 3464) and abuse reports (RFC 5965) as mail servers and feedback loops
send them, about one of our emails or, forged, about anyone: the returned headers, the
recipients named and the sender are the test's to choose."""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.utils import make_msgid

from support.paths import DATA
from support.smtp import Caught

__all__ = ["dsn", "arf", "corpus", "OUR_MESSAGE_ID", "CORPUS_NAMED"]

# A Message-ID shaped like nurture's (number.signature@domain) that nurture never signed.
OUR_MESSAGE_ID = re.compile(rb"<\d+\.[0-9a-f]{16}@acme\.example>")

# The reports of tests/data/inbound and the recipient each names, read from the files by hand
# (None: the recipient was redacted).
CORPUS_NAMED: dict[str, str | None] = {
    "bounce-exim-mail-delivery-failed.eml": "carla@example.org",
    "bounce-gmail-dsn-failure.eml": "erin@example.com",
    "bounce-office365-ndr-5.1.10.eml": "dave@northwind.example",
    "bounce-postfix-dsn-5.1.1-rfc822.eml": "ann@example.com",
    "bounce-postfix-remote-alias-rfc822-headers.eml": "bob@example.net",
    "bounce-qmail-failure-notice.eml": "frank@example.net",
    "delay-exim-warning-delayed-24-hours.eml": "ivy@example.com",
    "delay-office365-delivery-delayed.eml": "hank@example.org",
    "delay-postfix-delayed-mail-warning.eml": "gina@example.com",
    "complaint-microsoft-jmrp-arf.eml": "ann@example.com",
    "complaint-redacted-rfc822-headers.eml": None,
    "complaint-rfc5965-minimal.eml": "ann@example.com",
    "complaint-yahoo-arf.eml": "ann@example.com",
}


def corpus(file: str, *, about: Caught | None = None) -> bytes:
    """A report of the corpus as it was found (it references emails nurture never sent), or,
    ``about`` one of our emails, rewritten to reference it and name its recipient."""
    raw = (DATA / "inbound" / file).read_bytes()
    if about is None:
        return raw
    raw = OUR_MESSAGE_ID.sub(about.message["Message-ID"].encode(), raw)
    named = CORPUS_NAMED[file]
    if named is not None:
        raw = re.sub(re.escape(named.encode()), about.recipient.encode(), raw, flags=re.I)
    return raw


def _returned(message_id: str, to: str, subject: str) -> str:
    return (
        f"From: ada@acme.example\r\nTo: {to}\r\nMessage-ID: {message_id}\r\nSubject: {subject}\r\n"
    )


def dsn(
    recipients: Sequence[str],
    *,
    about: Caught | None = None,
    returned_to: str | None = None,
    status: str = "5.1.1",
    action: str = "failed",
    sender: str = "MAILER-DAEMON@mx.example.com (Mail Delivery System)",
) -> bytes:
    """A delivery status notification naming ``recipients`` (one Final-Recipient block each),
    with the headers of ``about`` returned (else of an email nurture never sent)."""
    message_id = about.message["Message-ID"] if about else make_msgid(domain="acme.example")
    to = returned_to or (about.recipient if about else recipients[0])
    subject = about.subject if about else "Read this"
    blocks = "".join(
        f"\r\nFinal-Recipient: rfc822; {r}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {status[0]}50 {status} user unknown\r\n"
        for r in recipients
    )
    return (
        f"From: {sender}\r\n"
        "To: ada@acme.example\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: {make_msgid(domain='mx.example.com')}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n"
        "\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.com\r\n{blocks}"
        "\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"{_returned(message_id, to, subject)}"
        "\r\n--B--\r\n"
    ).encode()


def arf(
    complainant: str | None,
    *,
    about: Caught | None = None,
    returned_to: str | None = None,
    sender: str = "feedback@isp.example",
) -> bytes:
    """An abuse report (ARF) about ``complainant`` (Original-Rcpt-To; None: redacted), with
    ``about`` returned (else an email nurture never sent)."""
    message_id = about.message["Message-ID"] if about else make_msgid(domain="acme.example")
    to = returned_to or (about.recipient if about else complainant or "redacted")
    subject = about.subject if about else "Read this"
    rcpt = f"Original-Rcpt-To: {complainant}\r\n" if complainant else ""
    return (
        f"From: {sender}\r\nTo: abuse@acme.example\r\n"
        "Subject: FW: spam report\r\n"
        f"Message-ID: {make_msgid(domain='isp.example')}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r\n'
        "\r\n--F\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
        "\r\n--F\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: abuse\r\nUser-Agent: isp-fbl/1.0\r\nVersion: 1\r\n{rcpt}"
        "\r\n--F\r\nContent-Type: message/rfc822\r\n\r\n"
        f"{_returned(message_id, to, subject)}\r\nhi\r\n"
        "\r\n--F--\r\n"
    ).encode()
