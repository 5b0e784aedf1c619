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
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

__all__ = ["GroupWriter", "WriteFailed"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class WriteFailed(Exception):
    """The database refused a row (its error is logged)."""


_STOP = object()


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
        self._queue: queue.Queue[tuple[object, Future[None]]] = queue.Queue(max_waiting)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
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
        """Hand ``item`` in and wait until it is committed (its error, if it failed). A
        full queue makes the caller wait in a thread, never the event loop."""
        self._started()
        future: Future[None] = Future()
        try:
            self._queue.put_nowait((item, future))
        except queue.Full:
            await asyncio.to_thread(self._queue.put, (item, future))
        await asyncio.wrap_future(future)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            group = [first]
            while len(group) < self.max_group:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item, _ in group)
            rows = [(item, f) for item, f in group if item is not _STOP]
            if rows:
                self._commit(rows)
            if stop:
                for item, future in group:
                    if item is _STOP:
                        future.set_result(None)
                return

    def _commit(self, rows: list[tuple[object, Future[None]]]) -> None:
        try:
            self._write([item for item, _ in rows])  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - written again one by one: one bad row fails alone
            if len(rows) == 1:
                log.exception("%s: a write failed", self.name, extra={"action": "write_failed"})
                rows[0][1].set_exception(WriteFailed(f"{self.name}: the write failed"))
                return
            for row in rows:
                self._commit([row])
            return
        self.groups += 1
        self.rows += len(rows)
        for _, future in rows:
            future.set_result(None)

    def close(self, timeout: float = 30.0) -> None:
        """Write what was handed in, then stop the thread."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        done: Future[None] = Future()
        self._queue.put((_STOP, done))
        thread.join(timeout)
        with self._lock:
            self._thread = None
