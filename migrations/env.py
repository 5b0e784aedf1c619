"""Alembic environment: the URL comes from the caller (nurture) or NURTURE_DATABASE_URL."""

from __future__ import annotations

from contextlib import nullcontext
from logging.config import fileConfig
from typing import Any

from alembic import context

from nurture.config import load_settings
from nurture.db.connect import connect_database, normalize_url
from nurture.db.models import Base

config = context.config
url = config.attributes.get("url")
if url is None:
    # Run by the alembic command itself: configure its logging and read nurture's settings.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    url = normalize_url(load_settings().database_url)

options: dict[str, Any] = {
    "target_metadata": Base.metadata,
    # SQLite alters a table by copying it: batch mode does that.
    "render_as_batch": url.startswith("sqlite"),
}


def run_migrations_offline() -> None:
    context.configure(url=url, literal_binds=True, **options)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    database = None if given is not None else connect_database(url)
    try:
        with nullcontext(given) if given is not None else database.connect() as conn:  # type: ignore[union-attr]
            context.configure(connection=conn, **options)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        if database is not None:
            database.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
