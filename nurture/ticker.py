"""The daemon's tick: judge the clicks whose window closed, then plan and send what is due;
started by the scheduler's interval or woken early (``nurture.wakeup``). One tick at a time:
an interval that comes while one runs is skipped and counted, and a tick that ran past its
interval is one log line (at most one a minute) saying how long it took and what it did.
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
        self._tick_task: asyncio.Task[None] | None = None
        self._again = False  # a wake-up came while a tick ran
        self._skipped = 0  # intervals skipped while a tick ran, since the last overrun line
        self._overruns = 0
        self._overrun_said = float("-inf")
        self._running: asyncio.Future[None] | None = None

    async def interval(self) -> None:
        """The scheduler's interval: a tick starts unless one runs (then the interval is
        skipped and counted: a tick that overruns is one log line when it ends, not a
        warning per interval)."""
        if self._ticking.locked():
            self._skipped += 1
            return
        self._running = asyncio.ensure_future(self.tick())  # kept: a task is weakly held

    async def wake(self) -> None:
        """A wake-up (a reply, a form, a click about to be judged): tick now, or right after
        the tick under way."""
        if self._ticking.locked():
            self._again = True
            return
        await self.tick()

    async def tick(self) -> None:
        """Decide the clicks whose window closed, then plan and send what is due."""
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
        assert self.services is not None
        tracker, dispatcher, clock = (
            self.services.tracker,
            self.services.dispatcher,
            self.services.clock,
        )
        began = time.perf_counter()
        judged = planned = sent = 0
        clicks_took = 0.0
        try:
            judged = await asyncio.to_thread(lambda: tracker.evaluate_clicks(clock.now()))
            clicks_took = time.perf_counter() - began
            planned, sent = await dispatcher.run_once()
        except Exception:
            log.exception("tick failed; the next one tries again", extra={"action": "tick_failed"})
            return
        finally:
            took = time.perf_counter() - began
            TICK_SECONDS.observe(took)
            if took > self.services.settings.tick_seconds:
                self._overran(took, clicks_took, judged, planned, sent)
        if planned or sent:
            log.info(
                "tick: %d enrollments decided, %d emails attempted",
                planned,
                sent,
                extra={"action": "tick", "planned": planned, "sent": sent},
            )

    def _overran(self, took: float, clicks: float, judged: int, planned: int, sent: int) -> None:
        """One line for a tick that ran past its interval (at most one a minute, counting
        the others), saying what it did."""
        TICK_OVERRUNS.inc()
        self._overruns += 1
        now = time.monotonic()
        if now - self._overrun_said < 60:
            return
        log.warning(
            "a tick took %.1fs, past its %ss interval: judging %d clicks %.1fs, deciding %d "
            "enrollments and sending %d emails %.1fs; %d intervals skipped, %d overruns since "
            "the last such line",
            took,
            self.services.settings.tick_seconds,
            judged,
            clicks,
            planned,
            sent,
            took - clicks,
            self._skipped,
            self._overruns,
            extra={"action": "tick_overrun", "seconds": round(took, 3)},
        )
        self._overrun_said, self._overruns, self._skipped = now, 0, 0

    async def finish(self) -> None:
        task = self._tick_task
        if task is None or task.done():
            return
        await asyncio.wait({task}, timeout=self.services.settings.shutdown_timeout_seconds)
        if not task.done():
            log.warning(
                "the mail on the wire did not finish within %ss; leaving it to the next worker",
                self.services.settings.shutdown_timeout_seconds,
                extra={"action": "shutdown_timeout"},
            )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
