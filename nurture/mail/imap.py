"""Speaking IMAP: one folder of one mailbox, as the inbox reads it.

``ImapMailbox.open()`` logs in and selects the folder; the ``ImapFolder`` it yields lists the
UIDs after a given one, tells a message's size, fetches its bytes and marks it handled (a flag,
a move to another folder, or, only when the settings say so, deletion).
``ImapMailbox.wait_for_mail`` waits on IMAP IDLE. What the messages mean, and which UID was
handled last, is the inbox's business (``nurture.inbox``).
"""

from __future__ import annotations

import contextlib
import imaplib
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from nurture.config import Settings, SmtpTls

__all__ = ["ImapSettings", "ImapMailbox", "ImapFolder", "PROCESSED_FLAG"]

PROCESSED_FLAG = "$NurtureProcessed"
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


class ImapFolder:
    """The selected folder of one logged-in connection."""

    def __init__(self, conn: imaplib.IMAP4, imap: ImapSettings, uidvalidity: int) -> None:
        self._conn = conn
        self._imap = imap
        self.name = imap.folder
        self.uidvalidity = uidvalidity
        self._deleted = False

    def uids_after(self, last: int) -> list[int]:
        """The UIDs above ``last``, in order (a server may answer ``n:*`` with the last UID
        even when it is not above ``n``)."""
        _, data = self._conn.uid("SEARCH", f"UID {last + 1}:*")
        return sorted(u for u in (int(x) for x in (data[0] or b"").split()) if u > last)

    def size(self, uid: int) -> int:
        _, data = self._conn.uid("FETCH", str(uid), "(RFC822.SIZE)")
        found = _SIZE.search(data[0] if data and isinstance(data[0], bytes) else b"")
        return int(found.group(1)) if found else 0

    def fetch(self, uid: int) -> bytes:
        """The message's bytes, without setting \\Seen."""
        _, data = self._conn.uid("FETCH", str(uid), "(BODY.PEEK[])")
        return next((part[1] for part in data if isinstance(part, tuple)), b"")

    def mark_handled(self, uid: int) -> None:
        """Flag it \\Seen and $NurtureProcessed; then move it, or mark it for deletion, as the
        settings say."""
        self._conn.uid("STORE", str(uid), "+FLAGS", f"(\\Seen {PROCESSED_FLAG})")
        if self._imap.processed_folder:
            self._conn.uid("COPY", str(uid), _quote(self._imap.processed_folder))
            self._conn.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")
            self._conn.expunge()
        elif self._imap.delete_processed:
            self._conn.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")
            self._deleted = True

    def finish(self) -> None:
        """Expunge what was marked for deletion."""
        if self._deleted:
            self._conn.expunge()
            self._deleted = False


class ImapMailbox:
    def __init__(self, imap: ImapSettings) -> None:
        self.imap = imap
        self._idling: imaplib.IMAP4 | None = None
        self._lock = threading.Lock()

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

    @contextlib.contextmanager
    def open(self) -> Iterator[ImapFolder]:
        """Log in and select the folder; log out when done."""
        conn = self._connect()
        try:
            typ, _ = conn.select(_quote(self.imap.folder))
            if typ != "OK":
                raise imaplib.IMAP4.error(f"cannot select {self.imap.folder}")
            validity = conn.untagged_responses.get("UIDVALIDITY", [b"0"])[-1]
            uidvalidity = int(validity if isinstance(validity, bytes) else validity[0])
            yield ImapFolder(conn, self.imap, uidvalidity)
        finally:
            _close(conn)

    def wait_for_mail(self, timeout: float) -> bool | None:
        """IMAP IDLE (RFC 2177): block until the server announces new mail (True) or the
        timeout passes (False); None when the server does not offer IDLE (then polling alone
        it is). A server that refuses or garbles one IDLE raises: the caller tries again
        later, IDLE stays on. Python's imaplib has no IDLE before 3.14, so the exchange is
        written out here."""
        conn = self._connect()
        with self._lock:
            self._idling = conn
        try:
            if "IDLE" not in conn.capabilities:
                return None
            conn.select(_quote(self.imap.folder))
            tag = conn._new_tag()
            conn.send(tag + b" IDLE\r\n")
            # Untagged data (a new message counted, say) may come before the continuation.
            news = False
            while True:
                line = conn.readline()
                if not line:
                    raise imaplib.IMAP4.abort("the server closed the connection at IDLE")
                if line.startswith(b"+"):
                    break
                if line.startswith(b"*"):
                    news = news or _announces_mail(line)
                    continue
                raise imaplib.IMAP4.error(f"IDLE refused: {line.decode(errors='replace')}")
            deadline = time.monotonic() + timeout
            # Wait with select(), not a socket timeout: a timed-out socket file can never be
            # read again, and IDLE's completion still has to be read after DONE.
            while not news and (left := deadline - time.monotonic()) > 0:
                pending = isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending() > 0
                ready = pending or select.select([conn.sock], [], [], left)[0]
                if not ready:
                    break
                line = conn.readline()
                if not line:
                    break
                news = _announces_mail(line)
            conn.send(b"DONE\r\n")
            while True:  # the rest of the untagged lines, then IDLE's tagged completion
                line = conn.readline()
                if not line or line.startswith(tag):
                    break
            return news
        finally:
            with self._lock:
                self._idling = None
            _close(conn)

    def interrupt(self) -> None:
        """End a ``wait_for_mail`` in another thread now (it raises there): shutdown."""
        with self._lock:
            if self._idling is not None:
                with contextlib.suppress(OSError):
                    self._idling.sock.shutdown(socket.SHUT_RDWR)


def _close(conn: imaplib.IMAP4) -> None:
    """Log out; if the server is gone, still close the socket."""
    try:
        conn.logout()
    except (imaplib.IMAP4.error, OSError):
        with contextlib.suppress(OSError):
            conn.shutdown()


def _announces_mail(line: bytes) -> bool:
    return line.rstrip().endswith((b"EXISTS", b"RECENT"))


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
