"""The workers table (each running worker and its heartbeat) and the control table (the
deployment-wide sending pause, and named values such as the secret keys' history)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from nurture.clock import utc
from nurture.db.dialect import lock
from nurture.db.models import CONTROL, WORKERS

__all__ = ["WorkerStore", "ControlStore", "Pause"]

W = WORKERS.c
C = CONTROL.c


class WorkerStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def database_now(self) -> datetime:
        """The database's time now, aware UTC: the clock heartbeats are written and judged on."""
        if self._conn.dialect.name == "postgresql":
            found: datetime = self._conn.execute(select(func.clock_timestamp())).scalar_one()
            return utc(found)
        # Text such as 2026-01-05 09:00:00.123, UTC.
        text: str = self._conn.execute(
            select(func.strftime("%Y-%m-%d %H:%M:%f", "now"))
        ).scalar_one()
        return utc(datetime.fromisoformat(text))

    def register(self, worker_id: str, *, host: str, pid: int, now: datetime) -> None:
        self._conn.execute(
            insert(WORKERS).values(
                id=worker_id, host=host, pid=pid, started_at=now, heartbeat_at=now
            )
        )

    def heartbeat(self, worker_id: str, *, now: datetime) -> bool:
        """False if the row is gone (another worker took this one for dead)."""
        done = self._conn.execute(update(WORKERS).where(W.id == worker_id).values(heartbeat_at=now))
        return done.rowcount == 1

    def remove(self, worker_id: str) -> None:
        self._conn.execute(delete(WORKERS).where(W.id == worker_id))

    def forget_silent(self, *, since: datetime) -> list[str]:
        """Remove the workers not heard from since ``since`` (a time of the database's clock,
        as the heartbeats are); their ids."""
        gone = list(self._conn.scalars(select(W.id).where(W.heartbeat_at < since)))
        if gone:
            self._conn.execute(delete(WORKERS).where(W.id.in_(gone)))
        return gone

    def forget_all_but(self, worker_id: str) -> list[str]:
        """On SQLite, where one daemon holds the file: every other row is a dead predecessor."""
        gone = list(self._conn.scalars(select(W.id).where(W.id != worker_id)))
        if gone:
            self._conn.execute(delete(WORKERS).where(W.id.in_(gone)))
        return gone

    def live(self) -> list[tuple[str, str, int, datetime]]:
        q = select(W.id, W.host, W.pid, W.heartbeat_at).order_by(W.started_at)
        return [(r.id, r.host, r.pid, r.heartbeat_at) for r in self._conn.execute(q)]


@dataclass(frozen=True)
class Pause:
    """Sending is paused for everyone until ``until``, because of ``reason``."""

    since: datetime
    until: datetime
    reason: str
    times: int  # pauses in a row without a success between them

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "reason": self.reason,
            "times": self.times,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Pause:
        return cls(
            datetime.fromisoformat(value["since"]),
            datetime.fromisoformat(value["until"]),
            str(value["reason"]),
            int(value.get("times", 1)),
        )


_PAUSE = select(C.value).where(C.name == "sending")  # built once: the ledger reads it often


class ControlStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def pause(self) -> Pause | None:
        value = self._conn.scalar(_PAUSE)
        return Pause.from_json(value) if value else None

    def set_pause(
        self, reason: str, *, now: datetime, first: timedelta, longest: timedelta
    ) -> Pause:
        """Pause sending (or extend a pause): ``first`` long, doubling while pauses follow each
        other without a success between them, never longer than ``longest``."""
        found = self._conn.execute(lock(select(C.value).where(C.name == "sending"))).first()
        before = Pause.from_json(found.value) if found and found.value else None
        times = before.times + 1 if before else 1
        span = min(longest, first * 2 ** (times - 1))
        since = before.since if before else now
        pause = Pause(since, now + span, reason, times)
        if found is None:
            self._conn.execute(
                insert(CONTROL).values(name="sending", value=pause.to_json(), updated_at=now)
            )
        else:
            self._conn.execute(
                update(CONTROL)
                .where(C.name == "sending")
                .values(value=pause.to_json(), updated_at=now)
            )
        return pause

    def value(self, name: str) -> dict[str, Any] | None:
        """The value stored under ``name``, held until the transaction ends."""
        found = self._conn.execute(lock(select(C.value).where(C.name == name))).first()
        return dict(found.value) if found and found.value else None

    def put(self, name: str, value: dict[str, Any], *, now: datetime) -> None:
        change = update(CONTROL).where(C.name == name).values(value=value, updated_at=now)
        if self._conn.execute(change).rowcount:
            return
        try:
            with self._conn.begin_nested():  # another process may insert it first
                self._conn.execute(insert(CONTROL).values(name=name, value=value, updated_at=now))
        except IntegrityError:
            self._conn.execute(change)

    def clear_pause(self) -> bool:
        """Sending may go on; True if it was paused."""
        return bool(self._conn.execute(delete(CONTROL).where(C.name == "sending")).rowcount)
