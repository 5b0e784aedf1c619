"""The daemon's periodic jobs (nurture.periodic) on a real event loop: the first run at once,
then one every interval; ``now`` runs one at once; ``stop`` lets the run under way finish and
starts none after it; a job that raises does not end the loop. Waits poll with a deadline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from nurture.periodic import Periodic

DEADLINE = 10.0


async def until(what: str, check: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), DEADLINE)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def test_the_first_run_is_at_once_and_the_next_ones_follow() -> None:
    runs: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def job() -> None:
            runs.append(loop.time())

        job_ = Periodic("tick", job, 0.02)
        job_.start()
        await until("three runs", lambda: len(runs) >= 3)
        await job_.stop()

    asyncio.run(main())
    gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
    assert all(gap > 0 for gap in gaps)


def test_now_runs_the_job_at_once_however_long_the_interval() -> None:
    runs: list[str] = []

    async def main() -> None:
        async def job() -> None:
            runs.append("poll")

        job_ = Periodic("imap", job, 3600)
        job_.start()
        await until("the first run", lambda: len(runs) == 1)
        job_.now()
        await until("the run asked for", lambda: len(runs) == 2)
        await job_.stop()

    asyncio.run(main())
    assert runs == ["poll", "poll"]


def test_stop_lets_the_run_under_way_finish_and_starts_no_other() -> None:
    events: list[str] = []

    async def main() -> None:
        release = asyncio.Event()

        async def job() -> None:
            events.append("began")
            await release.wait()
            events.append("ended")

        job_ = Periodic("heartbeat", job, 0.001)
        job_.start()
        await until("a run under way", lambda: events == ["began"])
        stopping = asyncio.ensure_future(job_.stop())
        await asyncio.sleep(0)
        assert not stopping.done()  # it waits for the run
        release.set()
        await stopping

    asyncio.run(main())
    assert events == ["began", "ended"]


def test_a_job_that_raises_is_logged_and_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def main() -> None:
        async def job() -> None:
            runs.append(1)
            if len(runs) == 1:
                raise RuntimeError("database gone")

        job_ = Periodic("heartbeat", job, 0.001)
        job_.start()
        await until("a run after the failure", lambda: len(runs) >= 2)
        await job_.stop()

    with caplog.at_level(logging.ERROR, logger="nurture.periodic"):
        asyncio.run(main())
    [failed] = [r for r in caplog.records if getattr(r, "action", None) == "job_failed"]
    assert "heartbeat failed" in failed.getMessage()
