"""The built-in mail catcher: a real SMTP server (aiosmtpd) that keeps every email in a Maildir.

It runs when no SMTP server is configured, so a newcomer sees every email nurture sends on the
daemon's ``/outbox`` page. ``SmtpServerThread`` also serves the tests as their SMTP server.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import mailbox
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["SmtpServerThread", "MaildirHandler", "Outbox", "CaughtMail"]


class MaildirHandler:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(str(path), create=True)
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        with self._lock:
            self.maildir.add(content)
        return "250 OK"


class SmtpServerThread:
    """An aiosmtpd server on its own event loop in a thread; port 0 picks a free port."""

    def __init__(
        self,
        handler: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        smtp_factory: Callable[[Any], SMTP] | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self._factory = smtp_factory or (lambda h: SMTP(h, enable_SMTPUTF8=True))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="smtp-server", daemon=True)
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._error: BaseException | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                self._loop.create_server(self._session, self.host, self.port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        # Close the connections still open (a sender killed mid-session, one kept open),
        # and let their sessions end, so nothing is left for the garbage collector.
        for session in list(self._sessions):
            if session.transport is not None and not session.transport.is_closing():
                session.transport.close()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    def _session(self) -> SMTP:
        session = self._factory(self.handler)
        self._sessions.add(session)
        return session

    def start(self) -> SmtpServerThread:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> SmtpServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class CaughtMail:
    key: str
    received: datetime
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    @property
    def to(self) -> str:
        return str(self.message.get("To", ""))

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        return str(body.get_content()) if body is not None else ""


_KEY_TIME = re.compile(r"^(\d+)\.M(\d+)")


def _delivered(key: str) -> tuple[float, str]:
    """Maildir keys begin with the delivery time: seconds, then .M and microseconds."""
    match = _KEY_TIME.match(key)
    if match is None:
        return (0.0, key)
    return (int(match.group(1)) + int(match.group(2)) / 1e6, key)


class Outbox:
    """Reads what the catcher caught, newest first."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(str(path), create=True)

    def _load(self, key: str) -> CaughtMail:
        stored = self.maildir.get_message(key)
        received = datetime.fromtimestamp(stored.get_date(), UTC)
        msg = email.message_from_bytes(stored.as_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return CaughtMail(key, received, msg)

    def list(self, limit: int = 200) -> list[CaughtMail]:
        self.maildir.clean()
        keys = sorted(self.maildir.keys(), key=_delivered, reverse=True)
        return [self._load(k) for k in keys[:limit]]

    def get(self, key: str) -> CaughtMail | None:
        try:
            return self._load(key)
        except KeyError:
            return None
