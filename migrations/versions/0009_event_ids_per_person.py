"""an outside event's id is the app's, per person and event name: the unique key is (person,
"name/id"), not the id alone (two people's events with id 42 are two events)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

events = sa.table(
    "events",
    sa.column("id", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("detail", sa.JSON),
    sa.column("external_id", sa.String),
)


def _key(name: str, given: str) -> str:
    # As nurture.outside._idempotency_key made it when this revision was written.
    key = f"{name}/{given}"
    if len(key) > 200:
        key = f"{name}/sha256:{hashlib.sha256(given.encode()).hexdigest()}"
    return key


def upgrade() -> None:
    conn = op.get_bind()
    # Keys stored before this revision are the app's id alone: they become "name/id".
    rows = conn.execute(
        sa.select(events.c.id, events.c.detail, events.c.external_id).where(
            events.c.kind == "event", events.c.external_id.is_not(None)
        )
    ).all()
    for event_id, detail, key in rows:
        name = str((detail or {}).get("event", ""))
        conn.execute(
            events.update().where(events.c.id == event_id).values(external_id=_key(name, key))
        )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ux_events_external_id")
        batch_op.create_index(
            "ux_events_subscriber_id_external_id", ["subscriber_id", "external_id"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ux_events_subscriber_id_external_id")
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(events.c.id, events.c.detail, events.c.external_id).where(
            events.c.kind == "event", events.c.external_id.is_not(None)
        )
    ).all()
    seen: set[str] = set()
    for event_id, detail, key in rows:
        name = str((detail or {}).get("event", ""))
        old = key[len(name) + 1 :] if key.startswith(f"{name}/") else key
        # The old key was global: of the same id for several people, the first keeps it.
        conn.execute(
            events.update()
            .where(events.c.id == event_id)
            .values(external_id=None if old in seen else old)
        )
        seen.add(old)
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ux_events_external_id", ["external_id"], unique=True)
