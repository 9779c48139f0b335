"""telemetry seals and supplementary (late) digests

Revision ID: 0007
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "telemetry_seal",
        sa.Column("village", S(), nullable=False),
        sa.Column("sealed_through", sa.Date(), nullable=False),
        sa.Column("until_ms", sa.BigInteger(), nullable=False),
        sa.Column("sealed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("previous", sa.Date(), nullable=True),
        sa.Column("late_digested", sa.Date(), nullable=True),
        sa.PrimaryKeyConstraint("village"),
    )
    op.create_table(
        "late_digest",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tag", S(), nullable=False),
        sa.Column("value", S(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("supplement", sa.Integer(), nullable=False),
        sa.Column("batch", sa.Date(), nullable=False),
        sa.Column("readings", sa.Integer(), nullable=False),
        sa.Column("sha256", S(), nullable=False),
        sa.Column("computed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("salt", S(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tag", "value", "day", "supplement", name="uq_late_digest_supplement"),
        sa.UniqueConstraint("tag", "value", "day", "batch", name="uq_late_digest_batch"),
    )
    with op.batch_alter_table("late_digest") as b:
        b.create_index("ix_late_digest_value", ["value"])
        b.create_index("ix_late_digest_day", ["day"])


def downgrade() -> None:
    op.drop_table("late_digest")
    op.drop_table("telemetry_seal")
