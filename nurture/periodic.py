"""The daemon's periodic jobs (the tick, the heartbeat, the IMAP poll), each a task that runs
its job and then sleeps on the event loop's monotonic clock (``loop.time()``): a step of the
wall clock (NTP correcting it, an operator setting it) neither stalls nor bursts them. The
wall clock is read by the jobs, once per unit of work, never to decide when they run.

One run of a job at a time: a run longer than the interval delays the next, and the intervals
missed meanwhile are not made up (one run, not a burst). ``now`` runs the job at once (IMAP
IDLE's news), or right after the run under way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["Periodic"]

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, name: str, job: Callable[[], Awaitable[None]], seconds: float) -> None:
        self.name = name
        self.job = job
        self.seconds = seconds
        self._poke = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """The first run at once, then every ``seconds``."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    def now(self) -> None:
        """Run the job at once (on the event loop's thread)."""
        self._poke.set()

    async def stop(self) -> None:
        """No new run; the run under way (if any) finishes first."""
        self._stopping = True
        self._poke.set()
        if self._task is not None:
            await self._task

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not self._stopping:
            wait = due - loop.time()
            if wait > 0 and not self._poke.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poke.wait(), wait)
            if self._stopping:
                return
            early = self._poke.is_set() and loop.time() < due
            self._poke.clear()
            began = loop.time()
            try:
                await self.job()
            except Exception:  # a job logs its own failures; this is the last word
                log.exception("%s failed", self.name, extra={"action": "job_failed"})
            # Early (poked): the interval counts from this run. Late (the run overran):
            # at once, once, rather than every interval missed.
            due = began + self.seconds if early else max(due + self.seconds, loop.time())
