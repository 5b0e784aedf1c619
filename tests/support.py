"""Shared test helpers: a settable clock, a recording SMTP server, settings for tests."""

from __future__ import annotations

import email
import email.policy
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from nurture.config import Settings
from nurture.mail.catcher import SmtpServerThread

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class FixedClock:
    """The Clock protocol with a hand on it: tests move time instead of waiting."""

    def __init__(self, start: datetime = T0) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        self.current += delta if delta is not None else timedelta(**kwargs)
        return self.current


@dataclass
class Caught:
    sender: str
    recipient: str
    data: bytes

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
                    Caught(str(envelope.mail_from), rcpt, envelope.original_content or b"")
                )
        return "250 OK"

    def to(self, recipient: str) -> list[Caught]:
        with self.lock:
            return [c for c in self.caught if c.recipient == recipient]


def recording_smtp(handler: RecordingHandler | None = None) -> SmtpServerThread:
    return SmtpServerThread(handler or RecordingHandler())


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "sequences_dir": DATA / "sequences",
        "templates_dir": DATA / "templates",
        "data_dir": tmp_path,
        "secret_key": "test-secret-key",
        "base_url": "http://nurture.test",
        "api_token": "test-api-token",
        "retry_base_seconds": 60,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class ServedApp:
    """The real ASGI app under uvicorn, on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=0, log_config=None, lifespan="off", access_log=False
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        import time

        self.thread.start()
        for _ in range(500):
            if self.server.started:
                break
            time.sleep(0.01)
        assert self.server.started, "uvicorn did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
