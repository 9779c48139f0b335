"""Migration 0010: proofs stored as lists per leaf (0009) moved to pages of each window's tree, and back.

A registry anchored by the worker on a real anvil is taken down to 0009 (its proofs written back as
JSON lists), then upgraded again; the proofs read from the pages must be the ones the worker
stored, and records must still verify through the chain.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlmodel import Session, select

from core.db import alembic_config, get_engine, migrate
from core.services import Anvil
from ledger.anchor_models import ON_CHAIN, AnchorWindow, LedgerLeaf
from ledger.anchoring import Anchorer
from ledger.chain import Chain
from ledger.merkle import verify
from ledger.proofs import proof_of
from ledger.records import INSPECTION, RecordRef
from ledger.trace_io import load_demo_trace
from ledger.verify import TAMPERED, VERIFIED, check_record
from tests.chain_fixtures import chain_settings


def _anchored(tmp_path: Path, anvil: Anvil, chain: Chain) -> tuple[str, dict[int, list[str]], dict[int, str]]:
    """A demo registry anchored in windows of 40 leaves; its proofs by leaf id and roots by window."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    engine = get_engine(url)
    with Session(engine) as session:
        load_demo_trace(session)
        session.commit()
    Anchorer(engine, chain_settings(anvil, ANCHOR_WINDOW_SECONDS=0, ANCHOR_WINDOW_LEAVES=40), chain=chain).run_once()
    with Session(engine) as session:
        windows = session.exec(select(AnchorWindow)).all()
        assert len(windows) > 1 and all(w.state in ON_CHAIN for w in windows)
        proofs = {row.id: proof_of(session, row) for row in session.exec(select(LedgerLeaf)).all()}
        roots = {w.seq: w.root for w in windows}
    assert all(proofs.values())
    engine.dispose()
    return url, proofs, roots


def _old_proofs(url: str) -> dict[int, list[str]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, proof FROM ledger_leaf")).all()
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert "ledger_tree_page" not in tables
    return {i: json.loads(p) if p else [] for i, p in rows}


def test_migration_0010_moves_stored_proofs_to_pages_and_back(tmp_path: Path, anvil: Anvil, chain: Chain) -> None:
    url, proofs, roots = _anchored(tmp_path, anvil, chain)
    cfg = alembic_config(url)
    command.downgrade(cfg, "0009")  # 0010 only: every other branch stays
    old = _old_proofs(url)
    assert old == proofs  # 0009's format: each leaf's list of hex siblings, the same proofs
    # a stored proof altered at 0009: the upgrade keeps the rebuilt one, which leads to the root
    victim = next(iter(old))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE ledger_leaf SET proof = :p WHERE id = :i"),
            {"p": json.dumps(["0x" + "ab" * 32]), "i": victim},
        )
    engine.dispose()

    command.upgrade(cfg, "heads")
    engine = get_engine(url)
    settings = chain_settings(anvil)
    with Session(engine) as session:
        rows = session.exec(select(LedgerLeaf)).all()
        assert {row.id: proof_of(session, row) for row in rows} == proofs
        for row in rows:
            proof = [bytes.fromhex(p[2:]) for p in proof_of(session, row)]
            assert verify(bytes.fromhex(roots[row.window_seq][2:]), bytes.fromhex(row.leaf[2:]), proof)
        inspection = next(r for r in rows if r.kind == INSPECTION)
        check = check_record(session, RecordRef(INSPECTION, inspection.record_id), chain, None, settings)
        assert check.status == VERIFIED, check
    engine.dispose()


def test_migration_0010_refuses_a_window_whose_leaves_no_longer_build_its_root(
    tmp_path: Path, anvil: Anvil, chain: Chain
) -> None:
    url, proofs, _ = _anchored(tmp_path, anvil, chain)
    cfg = alembic_config(url)
    command.downgrade(cfg, "0009")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        victim = conn.execute(sa.text("SELECT id FROM ledger_leaf WHERE window_seq IS NOT NULL LIMIT 1")).scalar()
        conn.execute(sa.text("UPDATE ledger_leaf SET leaf = :l WHERE id = :i"), {"l": "0x" + "00" * 32, "i": victim})
    engine.dispose()
    with pytest.raises(RuntimeError, match="no longer build its root"):
        command.upgrade(cfg, "heads")
    engine = sa.create_engine(url)
    with engine.connect() as conn:  # the stored proofs are left as they were
        kept = dict(conn.execute(sa.text("SELECT id, proof FROM ledger_leaf")).all())
    engine.dispose()
    assert {i: json.loads(p) for i, p in kept.items()} == proofs


def test_tampered_record_still_fails_after_the_upgrade(tmp_path: Path, anvil: Anvil, chain: Chain) -> None:
    url, _, _ = _anchored(tmp_path, anvil, chain)
    cfg = alembic_config(url)
    command.downgrade(cfg, "0009")
    command.upgrade(cfg, "heads")
    engine = get_engine(url)
    with Session(engine) as session:
        inspection = session.exec(select(LedgerLeaf).where(LedgerLeaf.kind == INSPECTION)).first()
        assert inspection is not None
        session.execute(
            sa.text("UPDATE inspection SET report_no = report_no || 'x' WHERE id = :i"), {"i": inspection.record_id}
        )
        session.commit()
        check = check_record(session, RecordRef(INSPECTION, inspection.record_id), chain, None, chain_settings(anvil))
        assert check.status == TAMPERED, check
    engine.dispose()
