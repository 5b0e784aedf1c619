"""Group commit for the request path: rows handed in by many requests at once are written by
one thread in one transaction per group, and each request hears back once its row is
committed. A burst of clicks then costs a few transactions a second instead of one each,
and no request holds a write transaction (or, on SQLite, the database's single write lock)
on the event loop.

Durability: ``write`` returns only after the commit, so a request answers only what is on
disk; a kill -9 loses only rows whose request was never answered. A group that fails is
written again row by row, so one bad row fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["GroupWriter", "WriteFailed"]

log = logging.getLogger(__name__)

T = TypeVar("T")
# Who waits for a row: its event loop and future (None: close()'s stop mark).
_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"] | None


class WriteFailed(Exception):
    """The database refused a row (its error is logged)."""


_STOP = object()


def _tell(rows: list[tuple[object, _Waiter]], error: Exception | None) -> None:
    """Wake the requests of a group: one call into each event loop, not one per row (each
    is a write to the loop's wake-up pipe)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for _, waiter in rows:
        if waiter is not None:
            by_loop.setdefault(waiter[0], []).append(waiter[1])
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a loop that closed: nobody waits
            loop.call_soon_threadsafe(_settle, futures, error)


def _settle(futures: list[asyncio.Future[None]], error: Exception | None) -> None:
    for future in futures:
        if future.done():
            continue  # its request went away
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class GroupWriter(Generic[T]):
    def __init__(
        self,
        write: Callable[[list[T]], None],
        *,
        name: str,
        max_group: int = 500,
        max_waiting: int = 10_000,
    ) -> None:
        self._write = write
        self.name = name
        self.max_group = max_group
        self._queue: queue.Queue[tuple[object, _Waiter]] = queue.Queue(max_waiting)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.groups = 0  # transactions written, for the benchmarks
        self.rows = 0

    def _started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"nurture-{self.name}-writer", daemon=True
                )
                self._thread.start()

    async def write(self, item: T) -> None:
        """Hand ``item`` in and wait until it is committed (WriteFailed if it was refused).
        A full queue makes the caller wait in a thread, never the event loop. After close(),
        WriteFailed at once (nothing would write it)."""
        if self._closed:
            raise WriteFailed(f"{self.name}: the writer is closed")
        self._started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        try:
            self._queue.put_nowait((item, (loop, future)))
        except queue.Full:
            await asyncio.to_thread(self._queue.put, (item, (loop, future)))
        await future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            group = [first]
            while len(group) < self.max_group:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [(item, w) for item, w in group if item is not _STOP]
            if rows:
                self._commit(rows)
            if len(rows) < len(group):  # close() was called: what came before it is written
                return

    def _commit(self, rows: list[tuple[object, _Waiter]]) -> None:
        try:
            self._write([item for item, _ in rows])  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - written again one by one: one bad row fails alone
            if len(rows) == 1:
                log.exception("%s: a write failed", self.name, extra={"action": "write_failed"})
                _tell(rows, WriteFailed(f"{self.name}: the write failed"))
                return
            for row in rows:
                self._commit([row])
            return
        self.groups += 1
        self.rows += len(rows)
        _tell(rows, None)

    def close(self, timeout: float = 30.0) -> None:
        """Write what was handed in, then stop the thread; later writes fail at once."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._queue.put((_STOP, None))
        thread.join(timeout)
        with self._lock:
            self._thread = None
