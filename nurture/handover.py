"""This worker's life in the workers table, and the hand-over of mail between workers.

A worker registers at start, says it is alive every heartbeat, and takes over the mail of
workers silent for longer than the timeout (``OutboxStore.reclaim``); it settles what it
holds itself when a batch's writes failed (at the start of its next tick, never from the
heartbeat's thread, which could race a batch on its way), and puts back what it claimed and
did not start when it stops. An operator's ``nurture resume`` ends a sending pause here too.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from nurture.db.workers import Pause

if TYPE_CHECKING:
    from nurture.dispatcher import Dispatcher

__all__ = ["Handover"]

log = logging.getLogger(__name__)


class Handover:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def register(self, *, only_worker: bool = False) -> int:
        """Write this worker's row. ``only_worker`` (SQLite: one daemon holds the file): every
        other row is a dead predecessor, whose mail is taken over at once. Returns how many
        messages were taken over."""
        d = self.dispatcher
        now = d.clock.now()
        with d.store.transaction() as tx:
            tx.workers.register(d.worker, host=socket.gethostname(), pid=os.getpid(), now=now)
            if not only_worker:
                return 0
            tx.workers.forget_all_but(d.worker)
            return tx.outbox.reclaim(now=now)

    def heartbeat(self, *, timeout: timedelta) -> tuple[list[str], int]:
        """Say this worker is alive; forget workers silent for longer than ``timeout`` and take
        over their mail. Returns (workers forgotten, messages taken over)."""
        d = self.dispatcher
        now = d.clock.now()
        with d.store.transaction() as tx:
            if not tx.workers.heartbeat(d.worker, now=now):
                if d.stopping.is_set():
                    return [], 0  # unregistered on the way out: stay so
                # Taken for dead (this process stalled longer than the timeout): its mail went
                # to others; carry on as a new row.
                log.error(
                    "this worker was taken for dead by another; registering again",
                    extra={"action": "worker_revived"},
                )
                host, pid = socket.gethostname(), os.getpid()
                tx.workers.register(d.worker, host=host, pid=pid, now=now)
            gone = tx.workers.forget_silent(since=now - timeout)
            if d.pacer.active:  # the deployment's rates, shared by the workers alive
                d.pacer.set_share(len(tx.workers.live()))
            return gone, tx.outbox.reclaim(now=now)

    def resume(self) -> Pause | None:
        """An operator's "try again now" after a pause: the pause ends, and what it held back
        is due at once. Returns the pause that ended, if any."""
        d = self.dispatcher
        now = d.clock.now()
        with d.store.transaction() as tx:
            pause = tx.control.pause()
            if pause is not None:
                tx.control.clear_pause()
                tx.outbox.due_now(until=pause.until, now=now)
        return pause

    def unregister(self) -> int:
        """What this worker claimed and did not start goes back to the queue, due now; what
        it handed to SMTP and never heard back about is taken over (resent) by the next.
        Returns how many messages were put back."""
        d = self.dispatcher
        now = d.clock.now()
        with d.store.transaction() as tx:
            released = tx.outbox.release_claims(d.worker, now=now)
            tx.workers.remove(d.worker)
        return released

    def settle(self, message_ids: Sequence[int] | None = None) -> int:
        """What this worker holds and is not sending (of ``message_ids``, or all): not
        started, back to the queue due now; handed to SMTP with no outcome written, sent again
        later with the same Message-ID. Returns how many."""
        d = self.dispatcher
        now = d.clock.now()
        with d.store.transaction() as tx:
            held = tx.outbox.leftovers(d.worker)
            if message_ids is not None:
                wanted = set(message_ids)
                held = [(i, handed) for i, handed in held if i in wanted]
            tx.outbox.release([i for i, handed in held if not handed], now=now)
            for message_id, handed in held:
                if handed:
                    tx.outbox.mark_unknown(
                        message_id,
                        at=now + d.policy.unknown_retry,
                        error="its worker's writes failed before its outcome was written",
                        worker=d.worker,
                    )
        return len(held)
