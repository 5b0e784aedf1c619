"""Connecting: the database URL spellings operators use, and one SQLAlchemy engine per process
set up for SQLite (WAL, foreign keys, ``BEGIN IMMEDIATE``) or PostgreSQL (psycopg 3).

A database that cannot be reached or a URL that cannot be read becomes one ``DatabaseError``
sentence here, at the boundary, instead of a driver's traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from nurture.errors import DatabaseError

__all__ = ["normalize_url", "is_sqlite", "connect_database", "describe_url", "reachable"]

T = TypeVar("T")


def normalize_url(url: str) -> str:
    """Accept the spellings operators use; PostgreSQL goes through psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def describe_url(url: str) -> str:
    """The URL as it may be shown: without its password."""
    try:
        return make_url(normalize_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return repr(url)


READS_ONLY = "nurture_reads_only"  # the execution option of Store.reading's connections


def is_sqlite(url: str) -> bool:
    with _translated(url):
        return make_url(normalize_url(url)).get_backend_name() == "sqlite"


def connect_database(url: str, **kwargs: Any) -> Engine:
    """The process's engine for ``url`` (nothing connects until it is used)."""
    url = normalize_url(url)
    with _translated(url):
        if not is_sqlite(url):
            return create_engine(url, pool_pre_ping=True, **kwargs)
        database = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs
        )

    @event.listens_for(database, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, issue BEGIN (see _on_begin); WAL lets readers go on
        # while the daemon writes; foreign keys are off by default in SQLite.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(database, "begin")
    def _on_begin(conn: Any) -> None:
        # BEGIN IMMEDIATE takes the write lock up front: two threads that read then write can
        # then never deadlock on the lock upgrade (SQLITE_BUSY without waiting). A transaction
        # that only reads (Store.reading) takes no lock: WAL readers never wait for writers.
        if conn.get_execution_options().get(READS_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return database


def reachable(url: str, check: Callable[[Any], T]) -> T:
    """Run ``check(connection)`` on a short-lived engine; any failure to connect or to read
    the URL is a ``DatabaseError`` naming the database."""
    database = connect_database(url)
    try:
        with _translated(url), database.connect() as conn:
            return check(conn)
    finally:
        database.dispose()


@contextmanager
def _translated(url: str) -> Iterator[None]:
    try:
        yield
    except (ArgumentError, NoSuchModuleError) as exc:
        raise DatabaseError(
            f"NURTURE_DATABASE_URL {describe_url(url)} cannot be used: {_first_line(exc)}"
        ) from None
    except (OperationalError, DBAPIError) as exc:
        raise DatabaseError(
            f"cannot connect to the database {describe_url(url)}: {_first_line(exc.orig or exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].strip() if text else type(exc).__name__
