"""Waking the tick early (nurture.wakeup): a wake runs the tick after its delay, an earlier
one wins over a later one, and a burst of wakes runs it once, not once per wake."""

from __future__ import annotations

import asyncio
import threading
import time

from nurture.wakeup import Wakeup


def test_wakes_run_the_tick_once_per_moment_and_the_earliest_wins() -> None:
    runs: list[float] = []

    async def tick() -> None:
        runs.append(time.monotonic())

    async def main() -> tuple[float, float]:
        wakeup = Wakeup()
        wakeup.soon()  # not attached yet: nothing to wake, nothing breaks
        wakeup.attach(tick, asyncio.get_running_loop())
        began = time.monotonic()
        wakeup.soon(0.3)
        for _ in range(100):
            wakeup.soon(0.2)  # a burst: one wake planned, not a hundred
        threading.Thread(target=wakeup.soon, args=(0.05,)).start()  # from another thread
        deadline = time.monotonic() + 5
        while len(runs) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.4)  # the later wakes it replaced may still fire: count them
        return began, time.monotonic()

    began, _ = asyncio.run(main())
    assert runs and runs[0] - began < 0.2  # the 0.05 s wake came first
    assert len(runs) <= 3  # the 0.05 s, and at most the 0.2 s and 0.3 s ones planned before it
