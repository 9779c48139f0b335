"""dead letters keep one copy of a message's payload; rows per message are bounded

A message whose 30,000 readings were all rejected used to write 30,000 dead-letter rows, each
with the whole payload. Now the payload is stored once in `dead_letter_payload` (with its size
and SHA-256; only a prefix for payload_too_large), referenced by the message's rows, and
`dead_letter.more` counts the further rejections of a reason that have no row of their own.
Existing rows are moved over: the rows of one message (same topic, time and payload) share one
payload row.

Revision ID: 0006
Revises: 0001
Create Date: 2026-12-02 10:00:00
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK = "fk_dead_letter_payload_id_dead_letter_payload"
CHUNK = 200  # rows read at a time (old payloads may be large)

dead_letter = sa.table(
    "dead_letter",
    sa.column("id", sa.Integer()),
    sa.column("topic", sa.String()),
    sa.column("received_at", sa.DateTime()),
    sa.column("payload", sa.LargeBinary()),
    sa.column("payload_id", sa.Integer()),
)
payloads = sa.table(
    "dead_letter_payload",
    sa.column("id", sa.Integer()),
    sa.column("size", sa.Integer()),
    sa.column("sha256", sa.String()),
    sa.column("payload", sa.LargeBinary()),
    sa.column("truncated", sa.Boolean()),
)


def upgrade() -> None:
    op.create_table(
        "dead_letter_payload",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("dead_letter_payload", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dead_letter_payload_sha256"), ["sha256"], unique=False)
    # Plain ADD COLUMN first (no table copy on SQLite), then one copy without the payloads.
    op.add_column("dead_letter", sa.Column("payload_id", sa.Integer(), nullable=True))
    op.add_column("dead_letter", sa.Column("more", sa.Integer(), nullable=False, server_default="0"))
    _move_payloads(op.get_bind())
    with op.batch_alter_table("dead_letter", schema=None) as batch_op:
        batch_op.drop_column("payload")
        batch_op.create_index(batch_op.f("ix_dead_letter_payload_id"), ["payload_id"], unique=False)
        batch_op.create_foreign_key(FK, "dead_letter_payload", ["payload_id"], ["id"])


def _move_payloads(conn: sa.Connection) -> None:
    """One payload row per message (topic, receive time, bytes); its rows point at it."""
    seen: dict[tuple[str, object, str, int], int] = {}
    last = 0
    while True:
        rows = conn.execute(
            sa.select(dead_letter.c.id, dead_letter.c.topic, dead_letter.c.received_at, dead_letter.c.payload)
            .where(dead_letter.c.id > last)
            .order_by(dead_letter.c.id)
            .limit(CHUNK)
        ).all()
        if not rows:
            return
        links = []
        for row_id, topic, received_at, payload in rows:
            data = bytes(payload or b"")
            key = (topic, received_at, hashlib.sha256(data).hexdigest(), len(data))
            if key not in seen:
                seen[key] = conn.execute(
                    payloads.insert()
                    .values(size=len(data), sha256=key[2], payload=data, truncated=False)
                    .returning(payloads.c.id)
                ).scalar_one()
            links.append({"row_id": row_id, "pid": seen[key]})
            last = row_id
        conn.execute(
            dead_letter.update()
            .where(dead_letter.c.id == sa.bindparam("row_id"))
            .values(payload_id=sa.bindparam("pid")),
            links,
        )


def downgrade() -> None:
    """Back to a payload per row (the counts of rejections without rows of their own are lost)."""
    op.add_column("dead_letter", sa.Column("payload", sa.LargeBinary(), nullable=True))
    conn = op.get_bind()
    conn.execute(
        dead_letter.update().values(
            payload=sa.select(payloads.c.payload).where(payloads.c.id == dead_letter.c.payload_id).scalar_subquery()
        )
    )
    conn.execute(dead_letter.update().where(dead_letter.c.payload.is_(None)).values(payload=b""))
    with op.batch_alter_table("dead_letter", schema=None) as batch_op:
        batch_op.drop_constraint(FK, type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_dead_letter_payload_id"))
        batch_op.drop_column("payload_id")
        batch_op.drop_column("more")
        batch_op.alter_column("payload", existing_type=sa.LargeBinary(), nullable=False)
    with op.batch_alter_table("dead_letter_payload", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dead_letter_payload_sha256"))
    op.drop_table("dead_letter_payload")
