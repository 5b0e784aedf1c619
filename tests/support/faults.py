"""A fault-injecting SMTP server: a real aiosmtpd server whose answers the test chooses, per
stage of the transaction (MAIL, RCPT, DATA's end), per recipient: a reply code and text, a
delay before answering, or a dropped connection. It records what it accepted (and what it
received before a drop, which a real server may well have delivered), and calls the test back
after each message it accepted, so a test can kill the sender at an exact moment.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from aiosmtpd.smtp import SMTP, Envelope, Session

from nurture.mail.catcher import SmtpServerThread
from support.smtp import Caught, RecordingHandler

Stage = Literal["mail", "rcpt", "data"]


@dataclass
class Fault:
    """What the server does at ``stage`` for ``recipient`` (None: everyone): answer
    ``reply`` (e.g. "554 5.7.1 blocked using zen.spamhaus.org") after ``delay`` seconds, or
    ``drop`` the connection. ``times`` limits how often it applies (None: always)."""

    stage: Stage
    reply: str | None = None
    delay: float = 0.0
    drop: bool = False
    recipient: str | None = None
    times: int | None = None

    def applies(self, stage: Stage, recipient: str | None) -> bool:
        if self.stage != stage or self.times == 0:
            return False
        return self.recipient is None or recipient is None or self.recipient == recipient


@dataclass
class FaultyHandler(RecordingHandler):
    faults: list[Fault] = field(default_factory=list)
    # Called (in the server's thread) after each message accepted with a 250: the number
    # accepted so far and the message.
    on_accepted: Callable[[int, Caught], None] | None = None
    # What arrived whole before the server dropped the connection instead of answering.
    dropped: list[Caught] = field(default_factory=list)
    accepted: int = 0
    _fault_lock: threading.Lock = field(default_factory=threading.Lock)

    def _take(self, stage: Stage, recipient: str | None) -> Fault | None:
        with self._fault_lock:
            for fault in self.faults:
                if fault.applies(stage, recipient):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    async def _apply(self, server: SMTP, fault: Fault) -> str | None:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.drop:
            assert server.transport is not None
            server.transport.close()
            return "421 4.4.2 gone"  # never read: the connection is closed
        return fault.reply

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        fault = self._take("mail", None)
        if fault is not None and (answer := await self._apply(server, fault)) is not None:
            return answer
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        fault = self._take("rcpt", address.lower())
        if fault is not None and (answer := await self._apply(server, fault)) is not None:
            return answer
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        recipient = envelope.rcpt_tos[0].lower() if envelope.rcpt_tos else None
        fault = self._take("data", recipient)
        if fault is not None:
            if fault.drop:
                with self.lock:
                    self.dropped.append(
                        Caught(str(envelope.mail_from), recipient or "", envelope.content or b"")
                    )
            answer = await self._apply(server, fault)
            if answer is not None:
                return answer
        status = await super().handle_DATA(server, session, envelope)
        with self.lock:
            self.accepted += 1
            count, last = self.accepted, self.caught[-1]
        if self.on_accepted is not None:
            # After the 250 has been written out, not before.
            asyncio.get_running_loop().call_later(0.005, self.on_accepted, count, last)
        return status


def faulty_smtp(handler: FaultyHandler | None = None) -> SmtpServerThread:
    return SmtpServerThread(handler or FaultyHandler())
