"""proofs as pages of each window's Merkle tree: `ledger_tree_page`, `ledger_leaf.tree_index`

A JSON list of hex siblings per leaf (~1.4 KB a leaf in a million-leaf window) becomes every node
of the window's tree once, in pages of 32 nodes, and the leaf's index in that tree (64 bytes a
leaf); ledger/proofs.py reads a proof back from a few pages. Existing proofs are moved: each
window's tree is rebuilt from its leaves (in id order, as the worker built it), its root checked
against the window's, and each stored proof against the rebuilt one.

Also drops three indexes of ledger_leaf that no query uses (kind and record_id are looked up
together, through uq_ledger_leaf_record; created_at not at all): each cost every insert a b-tree.

Revision ID: 0010
Revises: 0009 (and needs 0003, which made the ledger's tables)
Create Date: 2026-12-03 14:00:00
"""

import json
import logging
from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from alembic import op

from ledger.merkle import HASH_BYTES, MerkleTree

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = "0003"

PAGE_NODES = 32  # frozen here: the layout this revision writes (ledger.anchor_models.PAGE_NODES)
CHUNK = 10_000
DROPPED_INDEXES = ("kind", "record_id", "created_at")
log = logging.getLogger("alembic.runtime.migration")

window_t = sa.table("anchor_window", sa.column("seq", sa.Integer), sa.column("root", sa.String))
page_t = sa.table(
    "ledger_tree_page", sa.column("window_seq", sa.Integer), sa.column("page", sa.Integer), sa.column("nodes")
)


def _leaf_t(*extra: sa.ColumnClause) -> sa.TableClause:
    return sa.table(
        "ledger_leaf", sa.column("id", sa.Integer), sa.column("leaf", sa.String), sa.column("window_seq"), *extra
    )


def _proof_list(value: object) -> list[str]:
    if isinstance(value, str):  # a JSON column read without its type
        value = json.loads(value)
    return list(value or [])  # type: ignore[call-overload]


def upgrade() -> None:
    op.create_table(
        "ledger_tree_page",
        sa.Column("window_seq", sa.Integer(), nullable=False),
        sa.Column("page", sa.Integer(), nullable=False),
        sa.Column("nodes", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["window_seq"], ["anchor_window.seq"]),
        sa.PrimaryKeyConstraint("window_seq", "page"),
    )
    with op.batch_alter_table("ledger_leaf") as b:
        b.add_column(sa.Column("tree_index", sa.Integer(), nullable=True))
    conn = op.get_bind()
    leaf = _leaf_t(sa.column("proof", sa.JSON), sa.column("tree_index", sa.Integer))
    for seq, root in conn.execute(sa.select(window_t.c.seq, window_t.c.root).order_by(window_t.c.seq)).all():
        rows = conn.execute(sa.select(leaf.c.id, leaf.c.leaf).where(leaf.c.window_seq == seq).order_by(leaf.c.id)).all()
        if not rows:
            continue
        values = [bytes.fromhex(r.leaf[2:]) for r in rows]
        tree = MerkleTree.build(values)
        if "0x" + tree.root.hex() != root:
            raise RuntimeError(
                f"window {seq}: its leaves no longer build its root {root} (was the database altered?); "
                "restore it before upgrading, the stored proofs are left as they are"
            )
        differ = 0
        for start in range(0, len(rows), CHUNK):
            part = rows[start : start + CHUNK]
            stored = conn.execute(
                sa.select(leaf.c.id, leaf.c.proof).where(leaf.c.id.in_([r.id for r in part]))
            ).all()
            old = {r.id: _proof_list(r.proof) for r in stored}
            for k, r in enumerate(part, start=start):
                if old.get(r.id) != ["0x" + p.hex() for p in tree.proof(values[k])]:
                    differ += 1
            conn.execute(
                sa.update(leaf).where(leaf.c.id == sa.bindparam("leaf_id")).values(tree_index=sa.bindparam("ti")),
                [{"leaf_id": r.id, "ti": int(tree.tree_index[k])} for k, r in enumerate(part, start=start)],
            )
        if differ:  # the rebuilt proofs lead to the anchored root; the stored ones did not match them
            log.warning("window %s: %d stored proofs differed from the rebuilt tree's; the rebuilt ones are kept", seq, differ)
        blob = tree.nodes.tobytes()
        step = PAGE_NODES * HASH_BYTES
        conn.execute(
            sa.insert(page_t),
            [{"window_seq": seq, "page": p, "nodes": blob[o : o + step]} for p, o in enumerate(range(0, len(blob), step))],
        )
    with op.batch_alter_table("ledger_leaf") as b:
        b.drop_column("proof")
        for column in DROPPED_INDEXES:
            b.drop_index(f"ix_ledger_leaf_{column}")


def downgrade() -> None:
    with op.batch_alter_table("ledger_leaf") as b:
        b.add_column(sa.Column("proof", sa.JSON(), nullable=True))
    conn = op.get_bind()
    leaf = _leaf_t(sa.column("tree_index", sa.Integer), sa.column("proof", sa.JSON))
    for (seq,) in conn.execute(sa.select(window_t.c.seq).order_by(window_t.c.seq)).all():
        rows = conn.execute(
            sa.select(leaf.c.id, leaf.c.leaf, leaf.c.tree_index).where(leaf.c.window_seq == seq).order_by(leaf.c.id)
        ).all()
        if not rows:
            continue
        blob = b"".join(
            bytes(b) for (b,) in conn.execute(sa.select(page_t.c.nodes).where(page_t.c.window_seq == seq).order_by(page_t.c.page))
        )
        nodes = np.frombuffer(blob, dtype=np.uint8).reshape(-1, HASH_BYTES)
        tree = MerkleTree(nodes, np.array([r.tree_index for r in rows], dtype=np.int64))
        conn.execute(
            sa.update(leaf).where(leaf.c.id == sa.bindparam("leaf_id")).values(proof=sa.bindparam("p", type_=sa.JSON)),
            [{"leaf_id": r.id, "p": ["0x" + p.hex() for p in tree.proof(bytes.fromhex(r.leaf[2:]))]} for r in rows],
        )
    with op.batch_alter_table("ledger_leaf") as b:
        b.drop_column("tree_index")
        for column in DROPPED_INDEXES:
            b.create_index(f"ix_ledger_leaf_{column}", [column])
    op.drop_table("ledger_tree_page")
