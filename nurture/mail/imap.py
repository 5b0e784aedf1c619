"""Reading replies from an IMAP mailbox: the daemon polls it on a schedule.

Every new message (by UID, remembered per folder and UIDVALIDITY in the database) goes through
the same ``Tracker.receive`` as the webhook, then is flagged ``$NurtureProcessed`` and \\Seen,
or moved to a folder, or (only when ``NURTURE_IMAP_DELETE_PROCESSED`` says so) deleted. A
crash between handling a message and remembering its UID only means it is fetched again:
``receive`` recognises it and does nothing twice.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import re
import select
import ssl
import time
from dataclasses import dataclass

from nurture.clock import Clock
from nurture.config import Settings, SmtpTls
from nurture.db.store import Store
from nurture.mail.inbound import MAX_INBOUND_BYTES
from nurture.tracking import Tracker

__all__ = ["ImapSettings", "ImapPoller"]

log = logging.getLogger(__name__)

PROCESSED_FLAG = "$NurtureProcessed"
_UID = re.compile(rb"UID (\d+)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


@dataclass(frozen=True)
class ImapSettings:
    host: str
    port: int
    username: str
    password: str
    tls: SmtpTls
    folder: str = "INBOX"
    processed_folder: str | None = None
    delete_processed: bool = False
    timeout: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ImapSettings:
        assert settings.imap_host
        port = settings.imap_port or (993 if settings.imap_tls is SmtpTls.tls else 143)
        return cls(
            host=settings.imap_host,
            port=port,
            username=settings.imap_username or "",
            password=settings.imap_password or "",
            tls=settings.imap_tls,
            folder=settings.imap_folder,
            processed_folder=settings.imap_processed_folder,
            delete_processed=settings.imap_delete_processed,
        )


class ImapPoller:
    def __init__(
        self, imap: ImapSettings, *, tracker: Tracker, store: Store, clock: Clock, batch: int = 200
    ) -> None:
        self.imap = imap
        self.tracker = tracker
        self.store = store
        self.clock = clock
        self.batch = batch

    def _connect(self) -> imaplib.IMAP4:
        c = self.imap
        conn: imaplib.IMAP4
        if c.tls is SmtpTls.tls:
            conn = imaplib.IMAP4_SSL(
                c.host, c.port, ssl_context=ssl.create_default_context(), timeout=c.timeout
            )
        else:
            conn = imaplib.IMAP4(c.host, c.port, timeout=c.timeout)
            if c.tls is SmtpTls.starttls:
                conn.starttls(ssl.create_default_context())
        conn.login(c.username, c.password)
        return conn

    def poll_once(self) -> int:
        """Handle every message not handled yet; returns how many were handled."""
        conn = self._connect()
        try:
            typ, _ = conn.select(_quote(self.imap.folder))
            if typ != "OK":
                raise imaplib.IMAP4.error(f"cannot select {self.imap.folder}")
            validity = conn.untagged_responses.get("UIDVALIDITY", [b"0"])[-1]
            uidvalidity = int(validity if isinstance(validity, bytes) else validity[0])
            with self.store.transaction() as tx:
                last = tx.imap_last_uid(self.imap.folder, uidvalidity)
            typ, data = conn.uid("SEARCH", f"UID {last + 1}:*")
            uids = sorted(int(u) for u in (data[0] or b"").split() if int(u) > last)
            handled = 0
            for uid in uids[: self.batch]:
                self._handle(conn, uid)
                with self.store.transaction() as tx:
                    tx.set_imap_last_uid(self.imap.folder, uidvalidity, uid, now=self.clock.now())
                handled += 1
            if handled and self.imap.delete_processed and not self.imap.processed_folder:
                conn.expunge()
            return handled
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                conn.logout()

    def wait_for_mail(self, timeout: float) -> bool | None:
        """IMAP IDLE (RFC 2177): block until the server announces new mail (True) or the
        timeout passes (False); None when the server has no IDLE (then polling alone it is).
        Python's imaplib has no IDLE before 3.14, so the exchange is written out here."""
        conn = self._connect()
        try:
            if "IDLE" not in conn.capabilities:
                return None
            conn.select(_quote(self.imap.folder))
            tag = conn._new_tag()
            conn.send(tag + b" IDLE\r\n")
            if not conn.readline().startswith(b"+"):
                return None
            news = False
            deadline = time.monotonic() + timeout
            # Wait with select(), not a socket timeout: a timed-out socket file can never be
            # read again, and IDLE's completion still has to be read after DONE.
            while (left := deadline - time.monotonic()) > 0:
                pending = isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending() > 0
                ready = pending or select.select([conn.sock], [], [], left)[0]
                if not ready:
                    break
                line = conn.readline()
                if not line:
                    break
                if line.rstrip().endswith((b"EXISTS", b"RECENT")):
                    news = True
                    break
            conn.send(b"DONE\r\n")
            while True:  # the rest of the untagged lines, then IDLE's tagged completion
                line = conn.readline()
                if not line or line.startswith(tag):
                    break
            return news
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                conn.logout()

    def _handle(self, conn: imaplib.IMAP4, uid: int) -> None:
        typ, data = conn.uid("FETCH", str(uid), "(RFC822.SIZE)")
        size_match = _SIZE.search(data[0] if data and isinstance(data[0], bytes) else b"")
        size = int(size_match.group(1)) if size_match else 0
        if size > MAX_INBOUND_BYTES:
            # Far too large to be a reply: note it and leave it on the server, unread.
            self.tracker.set_aside(
                b"",
                f"IMAP {self.imap.folder} UID {uid}: {size} bytes, over {MAX_INBOUND_BYTES}",
                now=self.clock.now(),
                source="imap",
                identity=f"imap:{self.imap.folder}:{uid}:{size}",
            )
        else:
            typ, data = conn.uid("FETCH", str(uid), "(BODY.PEEK[])")
            raw = next((part[1] for part in data if isinstance(part, tuple)), b"")
            try:
                result = self.tracker.receive(
                    raw, now=self.clock.now(), source="imap", trusted=True
                )
                log.debug("IMAP UID %s: %s", uid, result.status)
            except Exception as exc:  # noqa: BLE001 - one message must never block the rest
                log.exception("IMAP UID %s could not be handled; set aside", uid)
                self.tracker.set_aside(
                    raw,
                    f"could not be handled: {type(exc).__name__}: {exc}",
                    now=self.clock.now(),
                    source="imap",
                )
        conn.uid("STORE", str(uid), "+FLAGS", f"(\\Seen {PROCESSED_FLAG})")
        if self.imap.processed_folder:
            conn.uid("COPY", str(uid), _quote(self.imap.processed_folder))
            conn.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")
            conn.expunge()
        elif self.imap.delete_processed:
            conn.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
