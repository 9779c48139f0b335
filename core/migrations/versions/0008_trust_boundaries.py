"""trust boundaries: products belong to a county (and declare the mass of a unit), events are
corrected by error declarations, growth summaries keep the devices they were computed from

Revision ID: 0008
Revises: 0003
Create Date: 2026-12-03 10:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0008"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("product", schema=None) as batch_op:
        batch_op.add_column(sa.Column("county_code", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("unit_kg", sa.Float(), nullable=True))
        batch_op.create_index(batch_op.f("ix_product_county_code"), ["county_code"], unique=False)
        batch_op.create_foreign_key("fk_product_county_code_county", "county", ["county_code"], ["code"])
    # Existing products: the county of the lots made of them, or the only county there is.
    op.execute(
        """
        UPDATE product SET county_code = (
            SELECT t.county_code FROM lot
            LEFT JOIN farm f ON f.id = lot.farm_id
            LEFT JOIN facility fa ON fa.id = lot.facility_id
            JOIN village v ON v.code = COALESCE(f.village_code, fa.village_code)
            JOIN township t ON t.code = v.township_code
            WHERE lot.product_id = product.id
            ORDER BY lot.id LIMIT 1
        )
        """
    )
    op.execute(
        """
        UPDATE product SET county_code = (SELECT MIN(code) FROM county)
        WHERE county_code IS NULL AND (SELECT COUNT(*) FROM county) = 1
        """
    )

    op.create_table(
        "event_correction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("corrective_event_id", sa.Integer(), nullable=True),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("declared_at", sa.DateTime(), nullable=False),
        sa.Column("declared_at_offset", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("salt", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.CheckConstraint("reason IN ('did_not_occur', 'incorrect_data')", name="ck_event_correction_reason"),
        sa.CheckConstraint("event_id <> corrective_event_id", name="ck_event_correction_not_self"),
        sa.ForeignKeyConstraint(["corrective_event_id"], ["trace_event.id"]),
        sa.ForeignKeyConstraint(["event_id"], ["trace_event.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("event_correction", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_event_correction_event_id"), ["event_id"], unique=True)
        batch_op.create_index(
            batch_op.f("ix_event_correction_corrective_event_id"), ["corrective_event_id"], unique=False
        )

    with op.batch_alter_table("growth_summary", schema=None) as batch_op:
        batch_op.add_column(sa.Column("devices", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("growth_summary", schema=None) as batch_op:
        batch_op.drop_column("devices")
    with op.batch_alter_table("event_correction", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_event_correction_corrective_event_id"))
        batch_op.drop_index(batch_op.f("ix_event_correction_event_id"))
    op.drop_table("event_correction")
    with op.batch_alter_table("product", schema=None) as batch_op:
        batch_op.drop_constraint("fk_product_county_code_county", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_product_county_code"))
        batch_op.drop_column("unit_kg")
        batch_op.drop_column("county_code")
