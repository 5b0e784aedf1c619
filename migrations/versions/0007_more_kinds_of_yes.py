"""more kinds of small yes: subscriber tags, A/B variants and the yes on each step's email,
idempotent outside events

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tags", sa.JSON(), server_default="[]", nullable=False))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("variant", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("yes_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("yes_by", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("answer", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("yes_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("after_reminder", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("clicked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("bot_clicks", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.create_index(
            "ix_messages_sequence_id_step_id", ["sequence_id", "step_id"], unique=False
        )
        batch_op.create_index(
            "ix_messages_time_to_yes", ["sequence_id", "step_id", "yes_seconds"], unique=False
        )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("external_id", sa.String(length=200), nullable=True))
        batch_op.create_index("ux_events_external_id", ["external_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ux_events_external_id")
        batch_op.drop_column("external_id")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_time_to_yes")
        batch_op.drop_index("ix_messages_sequence_id_step_id")
        columns = ("bot_clicks", "clicked_at", "after_reminder", "yes_seconds", "answer")
        for column in (*columns, "yes_by", "yes_at", "variant"):
            batch_op.drop_column(column)
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_column("tags")
