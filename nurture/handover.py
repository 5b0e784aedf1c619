"""This worker's life in the workers table, and the hand-over of mail between workers.

A worker registers at start, says it is alive every heartbeat, and takes over the mail of
workers silent for longer than the timeout (``OutboxStore.reclaim``). Heartbeats and silence
are measured on the database's clock, the one clock all workers share: a worker whose own
clock runs ahead, or steps back, neither takes the others for dead nor looks dead to them.
With each heartbeat (and at the start of every process) this process's clock is compared with
the database's; more than ``SKEW_LIMIT`` apart is a warning that says by how much, since the
times it writes (when an email is due, when a click was made) are then off by as much.

It settles what it holds itself when a batch's writes failed (at the start of its next tick,
never from the heartbeat's thread, which could race a batch on its way), and puts back what it
claimed and did not start when it stops. An operator's ``nurture resume`` ends a sending pause
here too.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from nurture.db.workers import Pause
from nurture.metrics import CLOCK_SKEW

if TYPE_CHECKING:
    from nurture.dispatcher import Dispatcher

__all__ = ["Handover", "SKEW_LIMIT"]

log = logging.getLogger(__name__)

SKEW_LIMIT = timedelta(seconds=5)  # a clock further off the database's than this is said
SKEW_REPEAT = 600.0  # seconds between two warnings about the same skew


class Handover:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._skew_said: tuple[float, timedelta] | None = None  # (monotonic time, skew) warned

    def register(self, *, only_worker: bool = False) -> int:
        """Write this worker's row. ``only_worker`` (SQLite: one daemon holds the file): every
        other row is a dead predecessor, whose mail is taken over at once. Returns how many
        messages were taken over."""
        d = self.dispatcher
        now = d.clock.now()
        with d.store.transaction() as tx:
            alive = tx.workers.database_now()
            tx.workers.register(d.worker, host=socket.gethostname(), pid=os.getpid(), now=alive)
            if not only_worker:
                return 0
            tx.workers.forget_all_but(d.worker)
            return tx.outbox.reclaim(now=now)

    def heartbeat(self, *, timeout: timedelta) -> tuple[list[str], int]:
        """Say this worker is alive; forget workers silent for longer than ``timeout`` (on the
        database's clock) and take over their mail; say so if this process's clock is off the
        database's. Returns (workers forgotten, messages taken over)."""
        d = self.dispatcher
        with d.store.transaction() as tx:
            alive, skew = self._measure(tx.workers.database_now)
            now = d.clock.now()
            if not tx.workers.heartbeat(d.worker, now=alive):
                if d.stopping.is_set():
                    return [], 0  # unregistered on the way out: stay so
                # Taken for dead (this process stalled longer than the timeout): its mail went
                # to others; carry on as a new row.
                log.error(
                    "this worker was taken for dead by another; registering again",
                    extra={"action": "worker_revived"},
                )
                host, pid = socket.gethostname(), os.getpid()
                tx.workers.register(d.worker, host=host, pid=pid, now=alive)
            gone = tx.workers.forget_silent(since=alive - timeout)
            if d.pacer.active:  # the deployment's rates, shared by the workers alive
                d.pacer.set_share(len(tx.workers.live()))
            found = gone, tx.outbox.reclaim(now=now)
        self._say(skew)
        return found

    def check_clock(self) -> timedelta:
        """This process's clock less the database's, said when it is off: a web process's at
        start (a worker's comes with each heartbeat)."""
        with self.dispatcher.store.transaction() as tx:
            _, skew = self._measure(tx.workers.database_now)
        self._say(skew)
        return skew

    def _measure(self, database_now: Callable[[], datetime]) -> tuple[datetime, timedelta]:
        """The database's time, and this process's clock less it: the clock is read on both
        sides of the query, so the round trip does not count as skew."""
        clock = self.dispatcher.clock
        before = clock.now()
        alive = database_now()
        after = clock.now()
        return alive, before + (after - before) / 2 - alive

    def _say(self, skew: timedelta) -> None:
        """A warning when the clock is off by more than ``SKEW_LIMIT``: at once, again when the
        skew changes, and every ``SKEW_REPEAT`` while it lasts; a line when it is right again."""
        seconds = skew.total_seconds()
        CLOCK_SKEW.set(seconds)
        said = self._skew_said
        if abs(skew) <= SKEW_LIMIT:
            if said is not None:
                log.info(
                    "this process's clock is back within %.0fs of the database's (%+.1fs)",
                    SKEW_LIMIT.total_seconds(),
                    seconds,
                    extra={"action": "clock_skew_gone", "seconds": round(seconds, 3)},
                )
                self._skew_said = None
            return
        at = time.monotonic()
        if said is not None and at - said[0] < SKEW_REPEAT and abs(skew - said[1]) <= SKEW_LIMIT:
            return
        log.warning(
            "this process's clock is %.1fs %s the database's: the times it writes (when an "
            "email is due, when a click was made) are off by as much (whether a worker is "
            "alive is judged on the database's clock); run NTP (chrony, systemd-timesyncd) on "
            "this machine",
            abs(seconds),
            "ahead of" if seconds > 0 else "behind",
            extra={"action": "clock_skew", "seconds": round(seconds, 3)},
        )
        self._skew_said = (at, skew)

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
