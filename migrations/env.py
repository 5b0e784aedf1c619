"""Alembic environment: the URL comes from the caller (nurture) or NURTURE_DATABASE_URL."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from nurture.config import load_settings
from nurture.db.models import Base
from nurture.db.session import make_engine, normalize_url

config = context.config
url = config.attributes.get("url")
if url is None:
    # Run by the alembic command itself: configure its logging and read nurture's settings.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    url = normalize_url(load_settings().database_url)

target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=url.startswith("sqlite"),
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context.configure(
                connection=conn,
                target_metadata=target_metadata,
                render_as_batch=url.startswith("sqlite"),
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
