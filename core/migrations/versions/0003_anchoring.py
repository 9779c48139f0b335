"""anchoring: leaves, windows, growth summaries, telemetry digests, lot manifests

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "anchor_window",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("window_id", S(), nullable=False),
        sa.Column("root", S(), nullable=False),
        sa.Column("prev_root", S(), nullable=False),
        sa.Column("leaf_count", sa.Integer(), nullable=False),
        sa.Column("state", S(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("tx_hash", S(), nullable=True),
        sa.Column("sent_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("block_number", sa.Integer(), nullable=True),
        sa.Column("block_hash", S(), nullable=True),
        sa.Column("block_time", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("log_index", sa.Integer(), nullable=True),
        sa.Column("gas_used", sa.Integer(), nullable=True),
        sa.Column("chain_id", sa.Integer(), nullable=True),
        sa.Column("contract", S(), nullable=True),
        sa.Column("last_error", S(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("anchor_window") as b:
        b.create_index("ix_anchor_window_window_id", ["window_id"], unique=True)
        b.create_index("ix_anchor_window_root", ["root"], unique=True)
        b.create_index("ix_anchor_window_state", ["state"])
        b.create_index("ix_anchor_window_tx_hash", ["tx_hash"])
    op.create_table(
        "ledger_leaf",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", S(), nullable=False),
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("leaf", S(), nullable=False),
        sa.Column("canonical", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("window_seq", sa.Integer(), nullable=True),
        sa.Column("proof", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["window_seq"], ["anchor_window.seq"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "record_id", name="uq_ledger_leaf_record"),
    )
    with op.batch_alter_table("ledger_leaf") as b:
        b.create_index("ix_ledger_leaf_kind", ["kind"])
        b.create_index("ix_ledger_leaf_record_id", ["record_id"])
        b.create_index("ix_ledger_leaf_leaf", ["leaf"])
        b.create_index("ix_ledger_leaf_created_at", ["created_at"])
        b.create_index("ix_ledger_leaf_window_seq", ["window_seq"])
    op.create_table(
        "growth_summary",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("lot_id", sa.Integer(), nullable=False),
        sa.Column("season_start", sa.Date(), nullable=False),
        sa.Column("season_end", sa.Date(), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.Column("computed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("salt", S(length=32), nullable=False),
        sa.ForeignKeyConstraint(["lot_id"], ["lot.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("growth_summary") as b:
        b.create_index("ix_growth_summary_lot_id", ["lot_id"], unique=True)
    op.create_table(
        "telemetry_digest",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tag", S(), nullable=False),
        sa.Column("value", S(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("readings", sa.Integer(), nullable=False),
        sa.Column("sha256", S(), nullable=False),
        sa.Column("computed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("salt", S(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tag", "value", "day", name="uq_telemetry_digest_day"),
    )
    with op.batch_alter_table("telemetry_digest") as b:
        b.create_index("ix_telemetry_digest_value", ["value"])
        b.create_index("ix_telemetry_digest_day", ["day"])
    op.create_table(
        "lot_manifest",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("lot_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("salt", S(length=32), nullable=False),
        sa.ForeignKeyConstraint(["lot_id"], ["lot.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("lot_id", "version", name="uq_lot_manifest_version"),
    )
    with op.batch_alter_table("lot_manifest") as b:
        b.create_index("ix_lot_manifest_lot_id", ["lot_id"])


def downgrade() -> None:
    for table in ("lot_manifest", "telemetry_digest", "growth_summary", "ledger_leaf", "anchor_window"):
        op.drop_table(table)
