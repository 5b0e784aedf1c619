"""events: a verdict for each click (human, bot, pending) and when a pending one is decided

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verdict", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("evaluate_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_events_pending",
            ["evaluate_at"],
            unique=False,
            postgresql_where=sa.text("verdict = 'pending'"),
            sqlite_where=sa.text("verdict = 'pending'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_pending")
        batch_op.drop_column("evaluate_at")
        batch_op.drop_column("verdict")
