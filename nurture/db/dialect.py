"""The seam between PostgreSQL and SQLite, named in one place.

- **Row locks.** On PostgreSQL, claims take rows with ``FOR UPDATE SKIP LOCKED`` so several
  workers share the work without waiting on each other; other reads lock what they are about
  to change. SQLite has no row locks (SQLAlchemy renders none there): every transaction takes
  the database's write lock up front (``BEGIN IMMEDIATE``, see ``nurture.db.connect``), which
  serializes writers instead.
- **Time.** Every datetime stored or read is aware UTC: PostgreSQL keeps ``timestamptz``,
  SQLite keeps text without an offset, which ``UtcDateTime`` reads back as UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, DateTime, Dialect, Select, Table, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeDecorator

__all__ = ["UtcDateTime", "claim", "lock", "lock_keys_kept", "lock_shared", "insert_new"]

Q = TypeVar("Q", bound=Select[Any])


class UtcDateTime(TypeDecorator[datetime]):
    """A ``timestamp with time zone`` that takes and gives aware UTC datetimes only."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: nurture stores aware UTC only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite: written as UTC, read back without an offset
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def claim(query: Q, *, of: Table) -> Q:
    """Rows of ``of`` for one worker: locked, and skipped by every other worker meanwhile."""
    return query.with_for_update(skip_locked=True, of=of)


def lock(query: Q) -> Q:
    """Rows this transaction is about to change (``FOR UPDATE``)."""
    return query.with_for_update()


def lock_keys_kept(query: Q) -> Q:
    """Rows whose non-key columns this transaction changes (``FOR NO KEY UPDATE``): unlike
    ``FOR UPDATE`` it does not block another transaction inserting rows that refer to them
    (a worker recording a subscriber's message while they unsubscribe)."""
    return query.with_for_update(key_share=True)


def lock_shared(query: Q) -> Q:
    """Rows read to decide something, held so no one changes them meanwhile (``FOR SHARE``);
    it waits for a transaction that is changing them to finish, so its outcome is seen."""
    return query.with_for_update(read=True)


def insert_new(conn: Connection, table: Table, values: dict[str, Any]) -> int | None:
    """Insert one row; its id, or None when a unique key says it is there already (the
    transaction goes on: the attempt ran in a savepoint)."""
    try:
        with conn.begin_nested():
            key = conn.execute(insert(table).values(values)).inserted_primary_key
    except IntegrityError:
        return None
    assert key is not None
    return int(key[0])
