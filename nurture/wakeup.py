"""Waking the tick early: when something a person did makes work due (a reply matched, a form
sent, an outside event, a click that will be judged in a second), the process that runs the
tick runs it then instead of at its next interval. Only within one process (``--role all``);
a web process of its own has no tick to wake and the workers' interval applies.

Cheap under a burst: only a wake earlier than the one already planned is scheduled.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

__all__ = ["Wakeup"]


class Wakeup:
    def __init__(self) -> None:
        self._run: Callable[[], Awaitable[None]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._at = float("inf")  # monotonic time of the wake planned
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Future[None]] = set()

    def attach(self, run: Callable[[], Awaitable[None]], loop: asyncio.AbstractEventLoop) -> None:
        """The tick to run (a coroutine function) and the event loop it runs on."""
        self._run, self._loop = run, loop

    def soon(self, after: float = 0.0) -> None:
        """Run the tick ``after`` seconds from now (from any thread), unless a wake is
        planned before then."""
        loop = self._loop
        if loop is None or self._run is None:
            return
        at = time.monotonic() + max(0.0, after)
        with self._lock:
            if self._at <= at and self._at > time.monotonic():
                return
            self._at = at
        loop.call_soon_threadsafe(self._plan, at)

    def _plan(self, at: float) -> None:
        assert self._loop is not None
        self._loop.call_at(self._loop.time() + max(0.0, at - time.monotonic()), self._fire)

    def _fire(self) -> None:
        with self._lock:
            if self._at <= time.monotonic():
                self._at = float("inf")
        assert self._run is not None
        task = asyncio.ensure_future(self._run())
        self._tasks.add(task)  # kept until done: the loop holds tasks only weakly
        task.add_done_callback(self._tasks.discard)
