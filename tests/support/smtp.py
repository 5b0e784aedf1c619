"""A real SMTP server (aiosmtpd) that records every message and refuses recipients by rule."""

from __future__ import annotations

import contextlib
import email
import email.policy
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.smtp import SMTP, Envelope, Session

from nurture.mail.catcher import SmtpServerThread


@dataclass
class Caught:
    sender: str
    recipient: str
    data: bytes
    helo: str = ""  # the name the client gave in EHLO

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None
        return body.get_content()  # type: ignore[no-any-return]


@dataclass
class RecordingHandler:
    """Keeps every message; refuses recipients by rule: {'bad@x': (550, '5.1.1 no such user')}."""

    refuse: dict[str, tuple[int, str]] = field(default_factory=dict)
    caught: list[Caught] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        rule = self.refuse.get(address.lower())
        if rule is not None:
            return f"{rule[0]} {rule[1]}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.caught.append(
                    Caught(
                        str(envelope.mail_from),
                        rcpt,
                        envelope.original_content or b"",
                        str(session.host_name or ""),
                    )
                )
        return "250 OK"

    def to(self, recipient: str) -> list[Caught]:
        with self.lock:
            return [c for c in self.caught if c.recipient == recipient]


def recording_smtp(handler: RecordingHandler | None = None) -> SmtpServerThread:
    return SmtpServerThread(handler or RecordingHandler())


class AcceptAll:
    """A transport that takes every email at once, for setting up people whose email was
    sent (the test is about what comes after, not about SMTP)."""

    size = 4

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AcceptAll]:
        yield self

    async def send(self, sender: str, recipient: str, data: bytes) -> None:
        return None

    async def close(self) -> None:
        return None
