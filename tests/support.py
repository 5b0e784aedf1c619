"""Shared test helpers: a settable clock, a recording SMTP server, settings for tests."""

from __future__ import annotations

import email
import email.policy
import re
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


class Dovecot:
    """A throwaway Dovecot IMAP server (Debian's dovecot-imapd) on a loopback port, with one
    user whose mail lives in a temporary Maildir."""

    USER = "replies"
    PASSWORD = "imap-test-password"

    def __init__(self) -> None:
        import os
        import shutil
        import socket
        import tempfile

        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not os.path.exists(binary):
            if os.environ.get("CI") == "true":
                raise RuntimeError("dovecot is required under CI: scripts/setup test installs it")
            import pytest

            pytest.skip("Debian's dovecot-imapd is not installed (scripts/setup test installs it)")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="nurture-dovecot-"))
        self.dir.chmod(0o755)  # the mail process runs as nobody
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.process: Any = None

    def __enter__(self) -> Dovecot:
        import pwd
        import subprocess
        import time

        nobody = pwd.getpwnam("nobody")
        for sub in ("run", "state", "home"):
            (self.dir / sub).mkdir()
        os_chown(self.dir / "home", nobody.pw_uid, nobody.pw_gid)
        (self.dir / "passwd").write_text(f"{self.USER}:{{PLAIN}}{self.PASSWORD}\n")
        conf = self.dir / "dovecot.conf"
        conf.write_text(
            f"""protocols = imap
listen = 127.0.0.1
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
mail_location = maildir:{self.dir}/home/%u/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.dir}/passwd
}}
userdb {{
  driver = static
  args = uid={nobody.pw_uid} gid={nobody.pw_gid} home={self.dir}/home/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""
        )
        self.process = subprocess.Popen([self.binary, "-F", "-c", str(conf)])
        import socket

        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"dovecot did not start: {(self.dir / 'dovecot.log').read_text()}")

    def __exit__(self, *exc: object) -> None:
        import shutil

        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        import imaplib

        conn = imaplib.IMAP4("127.0.0.1", self.port)
        try:
            conn.login(self.USER, self.PASSWORD)
            typ, data = conn.append(folder, None, None, raw)
            assert typ == "OK", data
        finally:
            conn.logout()

    def flags(self, folder: str = "INBOX") -> list[str]:
        import imaplib

        conn = imaplib.IMAP4("127.0.0.1", self.port)
        try:
            conn.login(self.USER, self.PASSWORD)
            conn.select(folder)
            typ, data = conn.uid("FETCH", "1:*", "(FLAGS)")
            return [d.decode() for d in data if isinstance(d, bytes)]
        finally:
            conn.logout()


def os_chown(path: Path, uid: int, gid: int) -> None:
    import os

    os.chown(path, uid, gid)


_ANCHOR = re.compile(r'<a href="(http://[^"]+/c/[^"]+)"([^>]*)>')


def visible_links(html: str) -> list[str]:
    """The tracked links a person can see (not the hidden honeypot link)."""
    return [url for url, rest in _ANCHOR.findall(html) if "display:none" not in rest]
