"""Sending over SMTP with aiosmtplib: a few kept-open connections, one transaction at a time on
each, the outcome of every message told apart.

SMTP failures are translated here, at the boundary, by whose fault they are
(``nurture.mail.replies``): ``Bounce`` (the address is bad for good), ``Rejected`` (this
message was refused: spam, policy), ``RelayRefused`` (our relay, login, sender or IP: sending
must pause), ``OutcomeUnknown`` (the data went out and no answer came: the message may have
been delivered), and ``TemporarySendError`` (try later: with a code when the recipient's
server said 4xx, without one when the server could not be reached).

The end of DATA waits ``data_timeout`` (RFC 5321 4.5.3.2.6: ten minutes), every other command
``timeout``: a slow server answering the final dot after a minute is not a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import aiosmtplib

from nurture.config import Settings, SmtpTls
from nurture.errors import PermanentSendError, SendError, TemporarySendError
from nurture.mail.replies import Fault, Stage, classify, signature, throttles
from nurture.metrics import SMTP_CONNECT_ERRORS

__all__ = [
    "Transport",
    "Connection",
    "SmtpTarget",
    "SmtpPool",
    "NoRelay",
    "Bounce",
    "Rejected",
    "RelayRefused",
    "OutcomeUnknown",
    "NotStarted",
]

log = logging.getLogger(__name__)


class Bounce(PermanentSendError):
    """The server refused the recipient's address for good."""


class Rejected(PermanentSendError):
    """The server refused this message (spam, policy, size): this email fails; the person is
    not to blame."""


class RelayRefused(TemporarySendError):
    """The relay refused *us* (relaying denied, a login required or refused, our sender
    refused, our IP on a block list): nobody's fault but ours; all sending pauses."""


class OutcomeUnknown(TemporarySendError):
    """The message's data went out and no answer came (a timeout after the final dot, a
    connection lost during DATA): it may well have been delivered."""


class NotStarted(TemporarySendError):
    """Never attempted. Sent again at once, not after a backoff."""


class Connection(Protocol):
    async def send(self, sender: str, recipient: str, data: bytes) -> SendError | None:
        """One SMTP transaction; its error, or None when the relay accepted the message."""
        ...


class Transport(Protocol):
    """What the dispatcher sends through: ``size`` connections, each used by one worker."""

    size: int

    def connection(self) -> AbstractAsyncContextManager[Connection]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: SmtpTls = SmtpTls.none
    timeout: float = 30.0
    data_timeout: float = 600.0
    tls_context: ssl.SSLContext | None = None
    helo: str | None = None  # the EHLO name; None: this machine's fully qualified name

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpTarget:
        assert settings.smtp_host
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            tls=settings.smtp_tls,
            timeout=settings.smtp_timeout,
            data_timeout=settings.smtp_data_timeout,
            helo=settings.smtp_helo or socket.getfqdn(),
        )


def _refusal(stage: Stage, code: int, message: str) -> SendError:
    fault = classify(stage, code, message)
    text = f"{code} {' '.join(message.split())}"
    kind: type[SendError] = {
        Fault.recipient: Bounce,
        Fault.content: Rejected,
        Fault.ours: RelayRefused,
        Fault.temporary: TemporarySendError,
    }[fault]
    # A code marks a recipient's own answer (its 4xx count towards giving up); a refusal of us,
    # or a server's 4xx before any recipient was named, is never the recipient's.
    recipients = fault is not Fault.ours and stage in ("rcpt", "data")
    error = kind(text, code=code if recipients else None)
    error.signature = signature(stage, code, message)
    error.throttled = throttles(stage, code, message)
    return error


class _Client:
    """One kept-open connection of the pool."""

    def __init__(self, target: SmtpTarget) -> None:
        self.target = target
        self.smtp = aiosmtplib.SMTP(
            hostname=target.host,
            port=target.port,
            username=target.username,
            password=target.password,
            use_tls=target.tls is SmtpTls.tls,
            start_tls=target.tls is SmtpTls.starttls,
            timeout=target.timeout,
            tls_context=target.tls_context,
            local_hostname=target.helo,
        )

    async def send(self, sender: str, recipient: str, data: bytes) -> SendError | None:
        try:
            await self._send(sender, recipient, data)
        except SendError as exc:
            return exc
        except Exception as exc:  # a bug must not lose the others' outcomes
            log.exception("unexpected error sending to %s", recipient)
            await self.close()
            return TemporarySendError(f"{type(exc).__name__}: {exc}")
        return None

    async def _send(self, sender: str, recipient: str, data: bytes) -> None:
        smtp = self.smtp
        for attempt in (1, 2):
            if not smtp.is_connected:
                await self._connect()
            try:
                await smtp.mail(sender)
                break
            except aiosmtplib.SMTPServerDisconnected as exc:
                # A kept-open connection the server closed while idle: reconnect once.
                await self.close()
                if attempt == 2:
                    raise TemporarySendError(f"server disconnected: {exc}") from exc
            except aiosmtplib.SMTPResponseException as exc:
                await self._reset()
                raise self._ours(_refusal("mail", exc.code, exc.message), sender) from exc
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                await self.close()
                raise TemporarySendError(f"{type(exc).__name__}: {exc}") from exc
        try:
            await smtp.rcpt(recipient)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset()
            raise _refusal("rcpt", exc.code, exc.message) from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await self.close()  # nothing of the message was sent: safe to send again
            raise TemporarySendError(f"{type(exc).__name__}: {exc}") from exc
        try:
            await smtp.data(data, timeout=self.target.data_timeout)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset()  # a refused DATA command leaves the transaction open
            raise _refusal("data", exc.code, exc.message) from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            raise OutcomeUnknown(f"no answer to the message's data: {exc}") from exc

    @staticmethod
    def _ours(error: SendError, sender: str) -> SendError:
        if isinstance(error, RelayRefused):
            log.error(
                "the SMTP server refuses our sender %s: %s",
                sender,
                error,
                extra={"action": "smtp_sender_refused"},
            )
        return error

    async def _connect(self) -> None:
        """Connect, EHLO, STARTTLS and log in. A refused greeting or login is ours
        (``RelayRefused``); an unreachable server is temporary, retried until it is back."""
        try:
            await self.smtp.connect()
        except aiosmtplib.SMTPResponseException as exc:
            SMTP_CONNECT_ERRORS.inc()
            await self.close()
            raise _refusal("connect", exc.code, exc.message) from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            SMTP_CONNECT_ERRORS.inc()
            await self.close()
            log.warning(
                "cannot reach the SMTP server %s:%s: %s",
                self.target.host,
                self.target.port,
                exc,
                extra={"action": "smtp_unreachable"},
            )
            raise TemporarySendError(f"SMTP server: {type(exc).__name__}: {exc}") from exc

    async def _reset(self) -> None:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await self.smtp.rset()

    async def close(self) -> None:
        if self.smtp.is_connected:
            try:
                await asyncio.wait_for(self.smtp.quit(), timeout=5)
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                self.smtp.close()


class SmtpPool:
    """``size`` connections, each used by one worker at a time and kept open between sends."""

    def __init__(self, target: SmtpTarget, *, size: int = 4) -> None:
        self.target = target
        self.size = size
        self._idle: asyncio.Queue[_Client] | None = None

    def _queue(self) -> asyncio.Queue[_Client]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self.size):
                self._idle.put_nowait(_Client(self.target))
        return self._idle

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        idle = self._queue()
        client = await idle.get()
        try:
            yield client
        finally:
            idle.put_nowait(client)

    async def close(self) -> None:
        if self._idle is None:
            return
        while not self._idle.empty():
            await self._idle.get_nowait().close()
        self._idle = None


class _Nowhere:
    async def send(self, sender: str, recipient: str, data: bytes) -> SendError | None:
        return NotStarted("no SMTP server in this process")


class NoRelay:
    """The transport of a process that has no SMTP server to send through (a command run
    while the daemon's built-in catcher lives in another process): nothing is lost, every
    message stays queued for the daemon."""

    size = 1

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        yield _Nowhere()

    async def close(self) -> None:
        return None
