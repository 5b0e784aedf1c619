"""The daemon's IMAP reader: a periodic poll job of the daemon (``nurture.periodic``, on the
monotonic clock), and a thread waiting on IMAP IDLE that runs the poll at once when the server
announces mail. It holds no logic of its own: the inbox reads and handles the messages
(``Inbox.poll``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from nurture.clock import Clock
from nurture.inbox import Inbox
from nurture.mail.imap import ImapMailbox

__all__ = ["MailboxReader", "IDLE_SECONDS"]

log = logging.getLogger(__name__)

IDLE_SECONDS = 25 * 60  # RFC 2177: re-issue IDLE at least every 29 minutes


class MailboxReader:
    def __init__(self, mailbox: ImapMailbox, *, inbox: Inbox, clock: Clock) -> None:
        self.mailbox = mailbox
        self.inbox = inbox
        self.clock = clock
        self._polling = asyncio.Lock()
        self._stopping = threading.Event()
        self._idler: threading.Thread | None = None

    async def poll(self) -> None:
        """One IMAP poll in a thread; a failure is logged and the next poll tries again."""
        if self._polling.locked() or self._stopping.is_set():
            return
        inbox, mailbox, clock = self.inbox, self.mailbox, self.clock
        async with self._polling:
            try:
                handled = await asyncio.to_thread(lambda: inbox.poll(mailbox, clock=clock))
            except Exception:
                log.exception(
                    "IMAP poll failed; the next one tries again", extra={"action": "imap_failed"}
                )
                return
        if handled:
            log.info("IMAP: %d messages handled", handled, extra={"action": "imap_polled"})

    def watch(self, poll_now: Callable[[], None]) -> None:
        """Start the IDLE thread; ``poll_now`` is called (on the event loop) at news."""
        loop = asyncio.get_running_loop()
        self._idler = threading.Thread(
            target=self._idle, args=(loop, poll_now), name="imap-idle", daemon=True
        )
        self._idler.start()

    def _idle(self, loop: asyncio.AbstractEventLoop, poll_now: Callable[[], None]) -> None:
        """Wait on IMAP IDLE; without IDLE on the server, polling alone it is."""
        while not self._stopping.is_set():
            try:
                news = self.mailbox.wait_for_mail(timeout=IDLE_SECONDS)
            except Exception as exc:  # noqa: BLE001 - the server went away: wait, try again
                if self._stopping.is_set():
                    return  # interrupted by stop()
                log.warning(
                    "IMAP IDLE failed (%s); retrying in a minute",
                    exc,
                    extra={"action": "imap_idle_failed"},
                )
                self._stopping.wait(60)
                continue
            if news is None:
                log.info(
                    "the IMAP server has no IDLE: polling only", extra={"action": "imap_no_idle"}
                )
                return
            if news and not self._stopping.is_set():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(poll_now)

    async def stop(self) -> None:
        """No new poll; the poll in flight ends; the IDLE thread ends now rather than after
        its 25 minutes."""
        self._stopping.set()
        self.mailbox.interrupt()
        async with self._polling:
            pass
        if self._idler is not None:
            await asyncio.to_thread(self._idler.join, 10)
