"""Sending over SMTP with aiosmtplib: a few reused connections, bounded concurrency.

SMTP failures are translated here, at the boundary, into the two errors the dispatcher knows:
``TemporarySendError`` (4xx, refused or dropped connections, timeouts: retry later) and
``PermanentSendError`` (5xx; ``bounce`` is set when the server refused the recipient).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import aiosmtplib

from nurture.config import Settings, SmtpTls
from nurture.errors import PermanentSendError, SendError, TemporarySendError

__all__ = ["Transport", "SmtpTarget", "SmtpPool", "NoRelay", "Bounce", "NotStarted"]

log = logging.getLogger(__name__)


class Transport(Protocol):
    """What the dispatcher sends through."""

    async def send_many(
        self, messages: Sequence[tuple[str, str, bytes]], *, within: float | None = None
    ) -> list[SendError | None]:
        """Send (sender, recipient, data) messages; each one's error, or None when sent."""
        ...

    async def close(self) -> None: ...


class NotStarted(TemporarySendError):
    """Never attempted: its batch ran out of time. Sent again at once, not after a backoff."""


class Bounce(PermanentSendError):
    """The server refused the recipient with a 5xx: the address is bad for good."""


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: SmtpTls = SmtpTls.none
    timeout: float = 30.0
    tls_context: ssl.SSLContext | None = None

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
        )


class SmtpPool:
    """``size`` connections, each used by one send at a time and kept open between sends."""

    def __init__(self, target: SmtpTarget, *, size: int = 4) -> None:
        self.target = target
        self.size = size
        self._idle: asyncio.Queue[aiosmtplib.SMTP] | None = None

    def _queue(self) -> asyncio.Queue[aiosmtplib.SMTP]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self.size):
                self._idle.put_nowait(self._client())
        return self._idle

    def _client(self) -> aiosmtplib.SMTP:
        t = self.target
        return aiosmtplib.SMTP(
            hostname=t.host,
            port=t.port,
            username=t.username,
            password=t.password,
            use_tls=t.tls is SmtpTls.tls,
            start_tls=t.tls is SmtpTls.starttls,
            timeout=t.timeout,
            tls_context=t.tls_context,
        )

    async def send_many(
        self, messages: Sequence[tuple[str, str, bytes]], *, within: float | None = None
    ) -> list[SendError | None]:
        """Send (sender, recipient, data) messages over the pool's connections, each one
        draining the shared list in turn; returns each message's error, or None when sent.
        One failing recipient never stops or repeats the others. No message is started
        after ``within`` seconds: those come back as temporary errors, to be sent later."""
        late = NotStarted("not started in time (the claim on it was running out)")
        results: list[SendError | None] = [late] * len(messages)
        pending = iter(range(len(messages)))
        idle = self._queue()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within if within is not None else None

        async def worker() -> None:
            client = await idle.get()
            try:
                for i in pending:
                    if deadline is not None and loop.time() > deadline:
                        break
                    results[i] = None
                    try:
                        await self._send_on(client, *messages[i])
                    except SendError as exc:
                        results[i] = exc
                    except Exception as exc:  # a bug must not lose the others' outcomes
                        log.exception("unexpected error sending to %s", messages[i][1])
                        results[i] = TemporarySendError(f"{type(exc).__name__}: {exc}")
            finally:
                idle.put_nowait(client)

        await asyncio.gather(*(worker() for _ in range(min(self.size, len(messages)))))
        return results

    async def _send_on(
        self, client: aiosmtplib.SMTP, sender: str, recipient: str, data: bytes
    ) -> None:
        for attempt in (1, 2):
            if not client.is_connected:
                await self._connect(client)
            try:
                await client.sendmail(sender, [recipient], data)
                return
            except aiosmtplib.SMTPServerDisconnected as exc:
                # A kept-open connection the server closed while idle: reconnect once.
                await _close(client)
                if attempt == 2:
                    raise TemporarySendError(f"server disconnected: {exc}") from exc
            except aiosmtplib.SMTPRecipientsRefused as exc:
                # (aiosmtplib has already sent RSET, so the connection stays usable.)
                refusal = exc.recipients[0] if exc.recipients else None
                code = refusal.code if refusal else 550
                message = refusal.message if refusal else str(exc)
                if 500 <= code < 600:
                    raise Bounce(f"{code} {message}", code=code) from exc
                raise TemporarySendError(f"{code} {message}", code=code) from exc
            except aiosmtplib.SMTPSenderRefused as exc:
                # Our own envelope sender refused: an operator's problem, never the
                # recipient's, so no code: it is retried until someone fixes it.
                log.error(
                    "the SMTP server refuses our sender %s: %s %s",
                    sender,
                    exc.code,
                    exc.message,
                    extra={"action": "smtp_sender_refused"},
                )
                raise TemporarySendError(f"sender refused: {exc.code} {exc.message}") from exc
            except aiosmtplib.SMTPResponseException as exc:
                # What is left is the reply to DATA: about this message for this recipient.
                if 500 <= exc.code < 600:
                    raise PermanentSendError(f"{exc.code} {exc.message}", code=exc.code) from exc
                raise TemporarySendError(f"{exc.code} {exc.message}", code=exc.code) from exc
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                await _close(client)
                raise TemporarySendError(f"{type(exc).__name__}: {exc}") from exc

    async def _connect(self, client: aiosmtplib.SMTP) -> None:
        """Connect, EHLO, STARTTLS and log in. Whatever goes wrong here (refused, 421, a bad
        password, a TLS failure) is the server's or the operator's problem, never one
        recipient's: a temporary error without a code, retried until it is fixed."""
        try:
            await client.connect()
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await _close(client)
            log.warning(
                "cannot reach the SMTP server %s:%s: %s",
                self.target.host,
                self.target.port,
                exc,
                extra={"action": "smtp_unreachable"},
            )
            raise TemporarySendError(f"SMTP server: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._idle is None:
            return
        while not self._idle.empty():
            await _close(self._idle.get_nowait())
        self._idle = None


async def _close(client: aiosmtplib.SMTP) -> None:
    if client.is_connected:
        try:
            await asyncio.wait_for(client.quit(), timeout=5)
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            client.close()


class NoRelay:
    """The transport of a process that has no SMTP server to send through (a command run
    while the daemon's built-in catcher lives in another process): nothing is lost, every
    message stays queued for the daemon."""

    async def send_many(
        self, messages: Sequence[tuple[str, str, bytes]], *, within: float | None = None
    ) -> list[SendError | None]:
        return [NotStarted("no SMTP server in this process") for _ in messages]

    async def close(self) -> None:
        return None
