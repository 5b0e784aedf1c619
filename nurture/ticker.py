"""The daemon's tick, in two lanes that never wait for each other: **judging** the clicks
whose window closed (a yes takes effect), and **sending** (plan and send what is due, in
slices). Both run every ``NURTURE_TICK_SECONDS`` on the event loop's monotonic clock
(``nurture.periodic``: a step of the wall clock neither stalls nor bursts them) and when woken
early (``nurture.wakeup``: a reply, a form, a click about to be judged). A bulk send (a fresh
import's 10,000 confirmations) runs for minutes; a person's click during it is judged on time
and their next email goes in the next slice, since the sender claims what just fell due first.

One run of each lane at a time: an interval that comes while the sender runs is skipped and
counted, and a send that ran past its interval is one log line (at most one a minute) saying
how long it took and what it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from nurture.metrics import TICK_OVERRUNS, TICK_SECONDS
from nurture.services import Services

__all__ = ["Ticker"]

log = logging.getLogger(__name__)


class Ticker:
    def __init__(self, services: Services, stopping: threading.Event) -> None:
        self.services = services
        self._stopping = stopping
        self._ticking = asyncio.Lock()
        self._judging = asyncio.Lock()
        self._tick_task: asyncio.Task[None] | None = None
        self._judge_task: asyncio.Future[None] | None = None
        self._again = False  # a wake-up came while the sender ran
        self._judge_again = False  # a wake-up came while clicks were being judged
        self._skipped = 0  # intervals skipped while a tick ran, since the last overrun line
        self._overruns = 0
        self._overrun_said = float("-inf")
        self._running: asyncio.Future[None] | None = None

    async def interval(self) -> None:
        """The periodic interval: judge the clicks due, and start a send unless one runs
        (then the interval is skipped and counted: a send that overruns is one log line when
        it ends, not a warning per interval)."""
        self._start_judging()
        if self._ticking.locked():
            self._skipped += 1
            return
        self._running = asyncio.ensure_future(self.tick())  # kept: a task is weakly held

    async def wake(self) -> None:
        """A wake-up (a reply, a form, a click about to be judged): judge and send now, or
        right after the run under way."""
        self._start_judging()
        if self._ticking.locked():
            self._again = True
            return
        await self.tick()

    def _start_judging(self) -> None:
        task = self._judge_task
        if self._judging.locked() or (task is not None and not task.done()):
            # A run is under way or about to start (it takes the lock when it does): it, or
            # its next round, judges what this call would.
            self._judge_again = True
            return
        self._judge_task = asyncio.ensure_future(self.judge())

    async def judge(self) -> None:
        """Decide the clicks whose window closed (a human one on the ask is the yes, applied
        at once); if any was decided, the sender looks for what became due."""
        if self._stopping.is_set() or self._judging.locked():
            return
        tracker, clock = self.services.tracker, self.services.clock
        async with self._judging:
            while True:
                self._judge_again = False
                try:
                    judged = await asyncio.to_thread(lambda: tracker.evaluate_clicks(clock.now()))
                except Exception:
                    log.exception(
                        "judging clicks failed; the next tick tries again",
                        extra={"action": "judge_failed"},
                    )
                    return
                if judged:
                    self._poke()
                if not self._judge_again or self._stopping.is_set():
                    break

    def _poke(self) -> None:
        """Something may have become due: the sender runs now, or once more after its run."""
        if self._ticking.locked():
            self._again = True
        elif not self._stopping.is_set():
            self._running = asyncio.ensure_future(self.tick())

    async def tick(self) -> None:
        """Plan and send what is due, in slices, until nothing is."""
        if self._stopping.is_set() or self._ticking.locked():
            return
        async with self._ticking:
            while True:
                self._again = False
                self._tick_task = asyncio.ensure_future(self._tick())
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self._tick_task)
                if not self._again or self._stopping.is_set():
                    break

    async def _tick(self) -> None:
        dispatcher = self.services.dispatcher
        began = time.perf_counter()
        planned = sent = 0
        try:
            planned, sent = await dispatcher.run_once()
        except Exception:
            log.exception("tick failed; the next one tries again", extra={"action": "tick_failed"})
            return
        finally:
            took = time.perf_counter() - began
            TICK_SECONDS.observe(took)
            if took > self.services.settings.tick_seconds:
                self._overran(took, planned, sent)
        if planned or sent:
            log.info(
                "tick: %d enrollments decided, %d emails attempted",
                planned,
                sent,
                extra={"action": "tick", "planned": planned, "sent": sent},
            )

    def _overran(self, took: float, planned: int, sent: int) -> None:
        """One line for a send that ran past its interval (at most one a minute, counting
        the others), saying what it did."""
        TICK_OVERRUNS.inc()
        self._overruns += 1
        now = time.monotonic()
        if now - self._overrun_said < 60:
            return
        log.warning(
            "a tick took %.1fs, past its %ss interval: deciding %d enrollments and sending %d "
            "emails (clicks are judged meanwhile); %d intervals skipped, %d overruns since the "
            "last such line",
            took,
            self.services.settings.tick_seconds,
            planned,
            sent,
            self._skipped,
            self._overruns,
            extra={"action": "tick_overrun", "seconds": round(took, 3)},
        )
        self._overrun_said, self._overruns, self._skipped = now, 0, 0

    async def finish(self) -> None:
        """Wait for the judging and the sending under way, within one shutdown timeout."""
        task = self._tick_task
        running = {t for t in (self._judge_task, task) if t is not None and not t.done()}
        if not running:
            return
        await asyncio.wait(running, timeout=self.services.settings.shutdown_timeout_seconds)
        if self._judge_task is not None and not self._judge_task.done():
            # Its thread cannot be interrupted; its transaction ends with the process.
            log.warning(
                "clicks were still being judged at shutdown", extra={"action": "judge_left"}
            )
        if task is None or task.done():
            return
        log.warning(
            "the mail on the wire did not finish within %ss; leaving it to the next worker",
            self.services.settings.shutdown_timeout_seconds,
            extra={"action": "shutdown_timeout"},
        )
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
