"""alerts, their history and webhook deliveries

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-03 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0011"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES = ("open", "acknowledged", "resolved")
ACTIONS = ("opened", "acknowledged", "resolved", "reopened")
S = sqlmodel.sql.sqltypes.AutoString
T = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "alert",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", S(length=20), nullable=False),
        sa.Column("device_id", S(length=64), nullable=False),
        sa.Column("village_code", S(length=12), nullable=False),
        sa.Column("place", S(length=64), nullable=True),
        sa.Column("metric", S(length=40), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("state", sa.Enum(*STATES, name="alertstate"), nullable=False),
        sa.Column("opened_at", T(), nullable=False),
        sa.Column("last_breach_at", T(), nullable=False),
        sa.Column("normal_since", T(), nullable=True),
        sa.Column("acknowledged_at", T(), nullable=True),
        sa.Column("acknowledged_by", S(length=64), nullable=True),
        sa.Column("resolved_at", T(), nullable=True),
        sa.Column("resolved_by", S(length=64), nullable=True),
        sa.Column("updated_at", T(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("alert", schema=None) as batch_op:
        for column in ("kind", "device_id", "village_code", "state"):
            batch_op.create_index(batch_op.f(f"ix_alert_{column}"), [column], unique=False)
    op.create_table(
        "alert_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.Enum(*ACTIONS, name="alertaction"), nullable=False),
        sa.Column("at", T(), nullable=False),
        sa.Column("actor", S(length=64), nullable=False),
        sa.Column("note", S(length=1000), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["alert_id"], ["alert.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("alert_event", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_event_alert_id"), ["alert_id"], unique=False)
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("endpoint", S(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("state", S(length=12), nullable=False),
        sa.Column("due_at", T(), nullable=False),
        sa.Column("attempted_at", T(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", S(length=300), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["event_id"], ["alert_event.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webhook_delivery", schema=None) as batch_op:
        for column in ("event_id", "endpoint", "state", "due_at"):
            batch_op.create_index(batch_op.f(f"ix_webhook_delivery_{column}"), [column], unique=False)


def downgrade() -> None:
    op.drop_table("webhook_delivery")
    op.drop_table("alert_event")
    op.drop_table("alert")
    sa.Enum(name="alertaction").drop(op.get_bind(), checkfirst=True)
    sa.Enum(name="alertstate").drop(op.get_bind(), checkfirst=True)
