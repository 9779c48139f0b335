"""api roles above the county: city_officer and province_officer

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-03 14:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_ROLES = ("city_officer", "province_officer")


def upgrade() -> None:
    # PostgreSQL keeps the roles in the enum type `role`; SQLite stores the name as text (no CHECK).
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():  # a new enum value is usable only once committed
            for role in NEW_ROLES:
                op.execute(f"ALTER TYPE role ADD VALUE IF NOT EXISTS '{role}'")


def downgrade() -> None:
    # PostgreSQL cannot drop an enum value; users with these roles are removed so no row names them.
    op.execute(
        "DELETE FROM api_key WHERE user_id IN (SELECT id FROM api_user WHERE role IN "
        "('city_officer', 'province_officer'))"
    )
    op.execute("DELETE FROM api_user WHERE role IN ('city_officer', 'province_officer')")
