"""A throwaway Dovecot IMAP server (Debian's dovecot-imapd) on a loopback port, with one user
whose mail lives in a temporary Maildir. Under CI=true it must be there; elsewhere a test
without it is skipped."""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from support.net import free_port, wait_for

_CONFIG = """protocols = imap
listen = 127.0.0.1
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
mail_location = maildir:{dir}/home/%u/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {dir}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/home/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""


class Dovecot:
    USER = "replies"
    PASSWORD = "imap-test-password"

    def __init__(self) -> None:
        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not os.path.exists(binary):
            if os.environ.get("CI") == "true":
                raise RuntimeError("dovecot is required under CI: scripts/setup test installs it")
            pytest.skip("Debian's dovecot-imapd is not installed (scripts/setup test installs it)")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="nurture-dovecot-"))
        self.dir.chmod(0o755)  # the mail process runs as nobody
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Dovecot:
        nobody = pwd.getpwnam("nobody")
        for sub in ("run", "state", "home"):
            (self.dir / sub).mkdir()
        os.chown(self.dir / "home", nobody.pw_uid, nobody.pw_gid)
        (self.dir / "passwd").write_text(f"{self.USER}:{{PLAIN}}{self.PASSWORD}\n")
        conf = self.dir / "dovecot.conf"
        conf.write_text(
            _CONFIG.format(dir=self.dir, uid=nobody.pw_uid, gid=nobody.pw_gid, port=self.port)
        )
        self.process = subprocess.Popen([self.binary, "-F", "-c", str(conf)])

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        try:
            wait_for("dovecot to listen", listening, timeout=10)
        except AssertionError:
            log = (self.dir / "dovecot.log").read_text()
            raise RuntimeError(f"dovecot did not start: {log}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _session(self) -> imaplib.IMAP4:
        conn = imaplib.IMAP4("127.0.0.1", self.port)
        conn.login(self.USER, self.PASSWORD)
        return conn

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        conn = self._session()
        try:
            typ, data = conn.append(_quote(folder), None, None, raw)
            assert typ == "OK", data
        finally:
            conn.logout()

    def create(self, folder: str) -> None:
        conn = self._session()
        try:
            typ, data = conn.create(_quote(folder))
            assert typ == "OK", data
        finally:
            conn.logout()

    def flags(self, folder: str = "INBOX") -> list[str]:
        """The flags of every message in the folder, one string per message."""
        conn = self._session()
        try:
            conn.select(_quote(folder))
            typ, data = conn.uid("FETCH", "1:*", "(FLAGS)")
            return [d.decode() for d in data if isinstance(d, bytes)]
        finally:
            conn.logout()

    def settings(self, **overrides: Any) -> Any:
        """ImapSettings for this server."""
        from nurture.config import SmtpTls
        from nurture.mail.imap import ImapSettings

        return ImapSettings(
            "127.0.0.1", self.port, self.USER, self.PASSWORD, SmtpTls.none, **overrides
        )


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
