"""The anchoring worker against a real anvil: windows, exactly-once anchoring, chain outages, reorgs."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from core.db import get_engine, migrate
from core.services import Anvil
from ledger import manifest
from ledger.anchor_models import ON_CHAIN, AnchorState, AnchorWindow, LedgerLeaf, LotManifest
from ledger.anchoring import SOURCES, Anchorer, unhex
from ledger.chain import Chain
from ledger.merkle import leaf_hash
from ledger.models import Inspection, InspectionItem
from ledger.proofs import proof_of
from ledger.records import EVENT, INSPECTION, canonical_bytes, records_many
from ledger.trace_io import load_demo_trace
from tests.chain_fixtures import chain_settings


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    engine = get_engine(url)
    with Session(engine) as session:
        load_demo_trace(session)
        session.commit()
    yield engine
    engine.dispose()


def anchorer(engine: Engine, anvil: Anvil, chain: Chain | None, **env: object) -> Anchorer:
    settings = chain_settings(anvil, ANCHOR_WINDOW_SECONDS=0, **env)
    return Anchorer(engine, settings, chain=chain)


def leaves(engine: Engine) -> list[LedgerLeaf]:
    with Session(engine) as session:
        return list(session.exec(select(LedgerLeaf)).all())


def windows(engine: Engine) -> list[AnchorWindow]:
    with Session(engine) as session:
        return list(session.exec(select(AnchorWindow).order_by(AnchorWindow.seq)).all())


def test_every_record_is_anchored_once_and_its_proof_checks_on_chain(
    engine: Engine, anvil: Anvil, chain: Chain
) -> None:
    worker = anchorer(engine, anvil, chain, ANCHOR_WINDOW_LEAVES=40)
    report = worker.run_once()
    rows = leaves(engine)
    assert report.leaves == len(rows) > 40
    kinds = {r.kind for r in rows}
    assert {"lot/1", "event/1", "inspection/1", "manifest/1"} <= kinds
    ws = windows(engine)
    assert len(ws) == -(-len(rows) // 40)  # full windows of 40 and the rest
    assert all(w.state in ON_CHAIN for w in ws), [(w.window_id, w.state, w.last_error) for w in ws]
    assert chain.window_count() == len(ws)
    assert chain.last_root() == unhex(ws[-1].root)
    # windows form a chain of roots
    assert ws[0].prev_root == "0x" + "00" * 32
    assert all(b.prev_root == a.root for a, b in itertools.pairwise(ws))
    # each leaf is its canonical bytes' double hash, and its proof checks with the contract
    for row in rows[:: max(1, len(rows) // 25)]:
        assert leaf_hash(row.canonical).hex() == row.leaf[2:]
        window = next(w for w in ws if w.seq == row.window_seq)
        with Session(engine) as session:
            proof = [unhex(p) for p in proof_of(session, row)]
        assert chain.verify_on_chain(proof, window.root, row.leaf)
        bad = bytearray(unhex(row.leaf))
        bad[0] ^= 1
        assert not chain.verify_on_chain(proof, window.root, bytes(bad))
    # a second pass anchors nothing more
    again = worker.run_once()
    assert not again.sent and not again.windows and again.leaves == 0
    assert chain.window_count() == len(ws)


def test_gas_per_window_does_not_depend_on_its_size(engine: Engine, anvil: Anvil, chain: Chain) -> None:
    anchorer(engine, anvil, chain, ANCHOR_WINDOW_LEAVES=7).run_once()
    ws = [w for w in windows(engine) if w.gas_used]
    assert len({w.leaf_count for w in ws}) >= 2  # windows of 7 and a smaller rest
    assert max(w.gas_used or 0 for w in ws) - min(w.gas_used or 0 for w in ws) < 25_000  # only prevRoot 0->x differs


def test_chain_down_during_anchoring_then_every_leaf_is_anchored_exactly_once(
    engine: Engine, anvil: Anvil, chain: Chain
) -> None:
    worker = anchorer(engine, anvil, chain, ANCHOR_WINDOW_LEAVES=30)
    anvil.stop()
    report = worker.run_once()
    assert report.chain_error and "unreachable" in report.chain_error
    ws = windows(engine)
    assert ws and all(w.state == AnchorState.pending and w.tx_hash is None for w in ws)
    assert worker.run_once().chain_error  # still down: still waiting, nothing lost
    anvil.start()
    for _ in range(len(ws) + 1):
        worker.run_once()
    ws = windows(engine)
    assert all(w.state in ON_CHAIN for w in ws)
    assert chain.window_count() == len(ws)  # once each
    with Session(engine) as session:
        unwindowed = session.exec(
            select(func.count()).select_from(LedgerLeaf).where(col(LedgerLeaf.window_seq).is_(None))
        ).one()
    assert unwindowed == 0


def test_crash_after_sending_does_not_anchor_twice(engine: Engine, anvil: Anvil, chain: Chain) -> None:
    worker = anchorer(engine, anvil, chain, ANCHOR_WINDOW_LEAVES=10_000)
    worker.run_once()
    (w,) = windows(engine)
    assert w.state in ON_CHAIN
    with Session(engine) as session:  # the worker "forgot" it sent the window (crash before its commit)
        row = session.get(AnchorWindow, w.seq)
        assert row is not None
        Anchorer._clear(row, AnchorState.pending)
        session.add(row)
        session.commit()
    worker.run_once()
    (again,) = windows(engine)
    assert again.state in ON_CHAIN and again.tx_hash == w.tx_hash  # found on chain, not sent again
    assert chain.window_count() == 1


def test_reorg_that_drops_the_anchor_requeues_and_resends_the_window(
    engine: Engine, anvil: Anvil, chain: Chain
) -> None:
    worker = anchorer(engine, anvil, chain, ANCHOR_WINDOW_LEAVES=10_000, CHAIN_CONFIRMATIONS=5)
    worker.run_once()
    (w,) = windows(engine)
    assert w.state == AnchorState.included and w.block_number is not None
    anvil.rpc("anvil_reorg", 1, [])  # the head block (with our transaction) is replaced by an empty one
    assert chain.anchor_of(w.root) is None
    report = worker.run_once()
    (after,) = windows(engine)
    assert report.states.get(w.window_id) == AnchorState.requeued or after.state in ON_CHAIN
    # the same pass (or the next) sends it again
    worker.run_once()
    (after,) = windows(engine)
    assert after.state in ON_CHAIN and after.tx_hash != w.tx_hash
    assert chain.anchor_of(after.root) is not None and chain.window_count() == 1


def test_manifest_grows_and_never_drops_a_leaf(engine: Engine, anvil: Anvil, chain: Chain) -> None:
    worker = anchorer(engine, anvil, chain)
    worker.run_once()
    with Session(engine) as session:
        first = {m.lot_id: set(m.content["leaves"]) for m in session.exec(select(LotManifest))}
        insp = session.exec(select(Inspection).where(Inspection.passed == False)).first()  # noqa: E712
        assert insp is not None, "the demo has a failed inspection"
        for item in session.exec(select(InspectionItem).where(InspectionItem.inspection_id == insp.id)):
            session.delete(item)
        session.flush()
        session.delete(insp)  # tampering: a failed inspection removed after anchoring
        session.commit()
    worker.run_once()
    with Session(engine) as session:
        latest: dict[int, set[str]] = {}
        for m in session.exec(select(LotManifest).order_by(LotManifest.version)):
            latest[m.lot_id] = set(m.content["leaves"])
    assert all(first[lot] <= latest[lot] for lot in first)


def test_manifests_from_the_leaves_a_pass_made_equal_those_read_back(engine: Engine, anvil: Anvil) -> None:
    """A pass hands `ensure_manifests` the leaves it has just stored (not read back): the manifests are
    those made from the leaves in the database, and leaves it was not handed are still read."""
    worker = anchorer(engine, anvil, None)
    contents = []
    for known in ("none", "all", "some"):
        with Session(engine) as session:
            worker._made = {}
            worker.make_leaves(session, [k for k in SOURCES if k != manifest.MANIFEST])
            made = worker._made
            assert made[EVENT] and made[INSPECTION]
            handed = {"none": None, "all": made, "some": {EVENT: made[EVENT]}}[known]
            assert manifest.ensure_manifests(session, None, handed) > 5
            contents.append(
                sorted(
                    (m.lot_id, m.version, m.content)
                    for m in session.exec(select(LotManifest)).all()  # flushed by the query
                )
            )
            session.rollback()
    assert contents[0] == contents[1] == contents[2] and all(c["leaves"] for _, _, c in contents[0])


def test_manifest_leaves_built_in_memory_equal_those_built_from_their_rows(
    engine: Engine, anvil: Anvil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass builds the leaves of the manifest versions it adds from their content in memory (not read
    back), in batches of lots: each is the leaf of the record rebuilt from its stored row, and every
    manifest has exactly one leaf, in manifest id order."""
    monkeypatch.setattr(manifest, "MANIFEST_LOTS", 3)  # several batches
    worker = anchorer(engine, anvil, None)
    report = worker.run_once(force_window=True)
    with Session(engine) as session:
        rows = session.exec(
            select(LedgerLeaf).where(LedgerLeaf.kind == manifest.MANIFEST).order_by(col(LedgerLeaf.id))
        ).all()
        ids = session.exec(select(LotManifest.id).order_by(col(LotManifest.id))).all()
        assert [r.record_id for r in rows] == list(ids) and len(ids) > 5
        assert report.derived["manifests"] == len(ids)
        rebuilt = records_many(session, manifest.MANIFEST, list(ids))
        for row, rec in zip(rows, rebuilt, strict=True):
            assert row.canonical == canonical_bytes(rec)
            assert row.leaf == "0x" + leaf_hash(row.canonical).hex()
