"""Connecting: the database URL spellings operators use, and one SQLAlchemy engine per process
set up for SQLite (WAL, foreign keys, ``BEGIN IMMEDIATE``) or PostgreSQL (psycopg 3).

A database that cannot be reached or a URL that cannot be read becomes one ``DatabaseError``
sentence here, at the boundary, instead of a driver's traceback: a database nurture does not
speak (``mysql://``), a port that is not a number, a SQLite file in a folder that does not exist
or that nurture cannot write. A SQLite file nurture creates is readable by its owner only
(0600; SQLite gives its ``-wal`` and ``-shm`` files the same mode): it holds every address.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from nurture.errors import DatabaseError

__all__ = [
    "normalize_url",
    "is_sqlite",
    "sqlite_file",
    "connect_database",
    "describe_url",
    "reachable",
]

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
    except (ArgumentError, ValueError):
        return repr(re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url))


READS_ONLY = "nurture_reads_only"  # the execution option of Store.reading's connections


SUPPORTED = ("sqlite", "postgresql")


def _parsed(url: str) -> URL:
    with _translated(url):
        try:
            parsed = make_url(normalize_url(url))
        except ValueError:  # make_url reads the port with int()
            raise DatabaseError(
                f"NURTURE_DATABASE_URL {describe_url(url)} cannot be used: its port is not a number"
            ) from None
    if parsed.get_backend_name() not in SUPPORTED:
        raise DatabaseError(
            f"NURTURE_DATABASE_URL {describe_url(url)} cannot be used: only sqlite:///PATH and "
            "postgresql://USER@HOST/NAME databases are supported"
        )
    return parsed


def is_sqlite(url: str) -> bool:
    return _parsed(url).get_backend_name() == "sqlite"


def sqlite_file(url: str) -> Path | None:
    """The SQLite file of ``url`` (None for another database or one in memory), created 0600 if
    it is not there yet. A folder that does not exist, or that nurture cannot write (the
    database's -wal, -shm and .lock files are made beside it), is one ``DatabaseError``."""
    parsed = _parsed(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    folder = path.parent.absolute()
    where = f"NURTURE_DATABASE_URL {describe_url(url)}"
    if not folder.is_dir():
        raise DatabaseError(
            f"{where}: the folder {folder} does not exist; create it, or point the URL at a "
            "folder that does"
        )
    if not os.access(folder, os.W_OK):
        raise DatabaseError(
            f"{where}: nurture cannot write in the folder {folder}; it must be writable (the "
            "database and its -wal, -shm and .lock files live there)"
        )
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise DatabaseError(f"{where}: cannot create {path}: {exc.strerror or exc}") from None
    return path


def connect_database(url: str, **kwargs: Any) -> Engine:
    """The process's engine for ``url`` (nothing connects until it is used, but a SQLite file
    is checked and created here)."""
    url = normalize_url(url)
    if not is_sqlite(url):
        with _translated(url):
            return create_engine(url, pool_pre_ping=True, **kwargs)
    sqlite_file(url)
    with _translated(url):
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
