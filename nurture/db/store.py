"""The store: one database transaction at a time, with the queries of each table family.

``Store.transaction()`` yields a ``Tx``; ``tx.subscribers``, ``tx.enrollments``,
``tx.outbox``, ``tx.events``, ``tx.inbound``, ``tx.mailboxes``, ``tx.reports``,
``tx.workers``, ``tx.control``, ``tx.answers`` and ``tx.funnel`` read and write inside that one
transaction and hand back frozen rows. Every query is SQLAlchemy Core on one connection:
there is no ORM session whose cached objects could go stale after a bulk update. The store
stores; what a change means is decided by the engine and applied by ``nurture.journey``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

from nurture.db.answers import AnswerStore
from nurture.db.connect import READS_ONLY
from nurture.db.enrollments import EnrollmentStore
from nurture.db.events import EventStore
from nurture.db.funnel import FunnelStore
from nurture.db.inbound import InboundStore, MailboxStore
from nurture.db.outbox import OutboxStore
from nurture.db.reports import ReportStore
from nurture.db.subscribers import SubscriberStore
from nurture.db.workers import ControlStore, WorkerStore

__all__ = ["Store", "Tx"]


class Tx:
    """The queries of one transaction, by table family."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.subscribers = SubscriberStore(conn)
        self.enrollments = EnrollmentStore(conn)
        self.outbox = OutboxStore(conn)
        self.events = EventStore(conn)
        self.inbound = InboundStore(conn)
        self.mailboxes = MailboxStore(conn)
        self.reports = ReportStore(conn)
        self.workers = WorkerStore(conn)
        self.control = ControlStore(conn)
        self.answers = AnswerStore(conn)
        self.funnel = FunnelStore(conn)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A part of the transaction that is undone alone if it raises (one row of an
        import)."""
        with self._conn.begin_nested():
            yield


class Store:
    def __init__(self, database: Engine) -> None:
        self.database = database

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self.database.begin() as conn:
            yield Tx(conn)

    @contextmanager
    def reading(self) -> Iterator[Tx]:
        """A transaction that only reads (it must not write): on SQLite it takes no lock, so
        it never waits for a writer, nor makes one wait."""
        with self.database.connect() as conn:
            conn = conn.execution_options(**{READS_ONLY: True})
            with conn.begin():
                yield Tx(conn)

    def dispose(self) -> None:
        self.database.dispose()
