"""county statistics (analytics)

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-26 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = "0004"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "county_statistic",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("county_code", sqlmodel.sql.sqltypes.AutoString(length=6), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("indicator_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("unit", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("source_note", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("county_code", "year", "indicator_id", name="uq_county_statistic"),
    )
    with op.batch_alter_table("county_statistic", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_county_statistic_county_code"), ["county_code"], unique=False)
        batch_op.create_index(batch_op.f("ix_county_statistic_year"), ["year"], unique=False)
        batch_op.create_index(batch_op.f("ix_county_statistic_indicator_id"), ["indicator_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("county_statistic", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_county_statistic_indicator_id"))
        batch_op.drop_index(batch_op.f("ix_county_statistic_year"))
        batch_op.drop_index(batch_op.f("ix_county_statistic_county_code"))
    op.drop_table("county_statistic")
