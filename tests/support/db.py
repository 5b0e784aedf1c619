"""Rows as they are stored, read on the store's own engine with SQLAlchemy Core: what a test
checks is the database, not what a query of ours makes of it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, select

from nurture.db.models import EVENTS, INBOUND, MESSAGES, SUBSCRIBERS
from nurture.db.store import Store

__all__ = ["rows", "EVENTS", "INBOUND", "MESSAGES", "SUBSCRIBERS"]


def rows(store: Store, table: Table, **where: Any) -> list[Any]:
    """Every row of ``table`` matching ``where`` (column=value), by id."""
    q = select(table)
    for column, value in where.items():
        q = q.where(table.c[column] == value)
    with store.database.connect() as conn:
        return list(conn.execute(q.order_by(table.c.id)))
