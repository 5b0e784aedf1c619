"""The schema: the Alembic migrations of the repository's top-level ``migrations/``, installed
with nurture as the package ``nurture.migrations`` and found through importlib.resources, so an
installed nurture (a wheel, no source tree) migrates a database.

SQLite is upgraded by the daemon itself (one process owns the file); a server database must
be upgraded once, before its workers start, with ``nurture db upgrade``.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from nurture.db.connect import describe_url, is_sqlite, normalize_url, reachable
from nurture.errors import DatabaseError

__all__ = ["migrations_folder", "alembic_config", "upgrade", "ensure_schema"]

log = logging.getLogger(__name__)


def migrations_folder() -> Path:
    """Where ``nurture.migrations`` is: the installed package's folder (the source tree's
    ``migrations/`` in an editable install). Alembic reads its scripts from files on disk."""
    folder = resources.files("nurture.migrations")
    if not isinstance(folder, Path):  # a zipped install: Alembic cannot read it
        raise DatabaseError(f"the migrations {folder} are not a folder on disk")
    return folder


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_folder()))
    cfg.attributes["url"] = normalize_url(url)
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (the daemon does this itself for SQLite)."""
    reachable(url, lambda conn: None)  # a clear sentence if the database is not there
    command.upgrade(alembic_config(url), revision)
    log.info("database schema is at %s", revision, extra={"action": "db_upgraded"})


def ensure_schema(url: str) -> None:
    """Before any work: SQLite is upgraded in place; a server database must already be at
    head, else a ``DatabaseError`` says what to run."""
    if is_sqlite(url):
        upgrade(url)
        return
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()

    def revision(conn: Any) -> tuple[str | None, bool]:
        current = MigrationContext.configure(conn).get_current_revision()
        return current, inspect(conn).has_table("enrollments")

    current, has_tables = reachable(url, revision)
    if current != head or not has_tables:
        raise DatabaseError(
            f"the database {describe_url(url)} is at revision {current or 'none'}, "
            f"not {head}: run `nurture db upgrade`"
        )
