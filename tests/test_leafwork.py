"""Leaves built in child processes (ledger/leafwork.py) are the leaves built in the worker's own process,
byte for byte, in the same order; and a pass that spreads its records over children stores the same
leaves as one that does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from bench.anchor_world import generate
from core.db import make_engine, migrate
from core.settings import Settings
from ledger import anchoring, leafwork
from ledger.anchor_models import AnchorWindow, LedgerLeaf, LotManifest
from ledger.anchoring import Anchorer, unhex
from ledger.manifest import MANIFEST
from ledger.merkle import verify
from ledger.proofs import read_proof
from ledger.records import EVENT, INSPECTION, LOT, chunks
from ledger.trace_io import load_demo_trace


def _world(path: Path, records: int) -> str:
    url = f"sqlite:///{path}"
    migrate(url)
    engine = make_engine(url)
    with Session(engine) as session:
        load_demo_trace(session)  # its products and facilities, which the generated rows name
        session.commit()
    generate(engine, records, seed=3)
    engine.dispose()
    return url


def test_children_build_the_same_leaves_in_the_same_order(tmp_path: Path) -> None:
    url = _world(tmp_path / "registry.db", 1500)
    engine = make_engine(url)
    spread = leafwork.Spread(url, 2)
    try:
        with Session(engine) as session:
            for kind, table in ((EVENT, "trace_event"), (LOT, "lot"), (INSPECTION, "inspection")):
                ids = list(session.execute(sa.text(f"SELECT id FROM {table} ORDER BY id")).scalars())
                parts = list(chunks(ids, 37))
                assert len(parts) > 2
                here = [leafwork.build(session, kind, part, {}) for part in parts]
                timings: dict[str, float] = {}
                there = list(spread.build([(kind, p) for p in parts], timings))
                assert there == here, kind
                assert timings["records"] > 0 and timings["canonical"] > 0 and "wait_children" in timings
    finally:
        spread.close()
        engine.dispose()


def test_no_children_for_an_in_memory_database() -> None:
    assert leafwork.shareable_url(make_engine("sqlite://")) is None
    assert leafwork.shareable_url(make_engine("sqlite:///:memory:")) is None
    assert leafwork.shareable_url(make_engine("sqlite:////tmp/x.db")) == "sqlite:////tmp/x.db"


@pytest.mark.parametrize("processes", [1, 2, "broken"])
def test_a_pass_stores_the_same_leaves_with_or_without_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int | str
) -> None:
    """ "broken": the children cannot start (their engine's URL names no database driver), so the
    pool breaks and the worker builds every chunk itself."""
    monkeypatch.setattr(anchoring, "LEAF_CHUNK", 100)  # several chunks per kind, more than SPREAD_CHUNKS
    if processes == "broken":
        monkeypatch.setattr(leafwork, "shareable_url", lambda engine: "nosuchdriver://nowhere")
    _world(tmp_path / "a.db", 1200)
    shutil.copy(tmp_path / "a.db", tmp_path / "b.db")  # the same rows and salts
    leaves = {}
    for run in ("a", "b"):
        url = f"sqlite:///{tmp_path / f'{run}.db'}"
        engine = make_engine(url)
        n = (2 if processes == "broken" else int(processes)) if run == "a" else 1
        settings = Settings(_env_file=None, DATABASE_URL=url, ANCHOR_PROCESSES=n)  # type: ignore[call-arg]
        report = Anchorer(engine, settings).run_once(force_window=True)
        assert report.leaves >= 1200  # and the demo county's
        assert ("start_children" in report.timings) == (n > 1)
        assert report.children == (n if n > 1 and processes != "broken" else 0)
        with Session(engine) as session:
            leaf = LedgerLeaf.__table__.c  # type: ignore[attr-defined]
            q = sa.select(leaf.id, leaf.kind, leaf.record_id, leaf.leaf, leaf.canonical).order_by(leaf.id)
            rows = session.execute(q.where(leaf.kind != MANIFEST)).all()  # manifests: salts of their own
            leaves[run] = [tuple(r) for r in rows]
        engine.dispose()
    assert len(leaves["a"]) > 1000 and leaves["a"] == leaves["b"]


def test_held_rows_get_the_windows_and_places_they_would_get_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass that spreads over children holds its leaf rows until their windows are built and writes
    each once with its window and place: the same windows (leaf ids, counts), the same manifests,
    and every leaf's proof leads to its window's root, as when rows are stored first and placed
    after. Leaves waiting from an earlier pass go first; a last window that is neither full nor old
    stays open; the earlier pass makes the later one ask which lots the new records touch."""
    monkeypatch.setattr(anchoring, "LEAF_CHUNK", 100)
    url = f"sqlite:///{tmp_path / 'a.db'}"
    migrate(url)
    engine = make_engine(url)
    with Session(engine) as session:
        load_demo_trace(session)
        session.commit()
    engine.dispose()
    shutil.copy(tmp_path / "a.db", tmp_path / "b.db")
    seen = {}
    for run, hold in (("a", True), ("b", False)):
        url = f"sqlite:///{tmp_path / f'{run}.db'}"
        engine = make_engine(url)
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, DATABASE_URL=url, ANCHOR_PROCESSES=2, ANCHOR_WINDOW_LEAVES=500, ANCHOR_WINDOW_SECONDS=3600
        )
        worker = Anchorer(engine, settings)
        worker._hold = hold
        assert worker.run_once().windows == []  # the demo county's leaves wait: too few, too young
        generate(engine, 1200, seed=3)
        report = worker.run_once()
        assert ("hold_leaves" in report.timings) == hold and report.children == 2
        with Session(engine) as session:
            leaf = LedgerLeaf.__table__.c  # type: ignore[attr-defined]
            rows = session.execute(
                sa.select(leaf.id, leaf.leaf, leaf.window_seq, leaf.tree_index).order_by(leaf.id)
            ).all()
            wins = session.exec(select(AnchorWindow).order_by(AnchorWindow.seq)).all()
            for w in wins:
                members = [r for r in rows if r.window_seq == w.seq]
                assert len(members) == w.leaf_count == 500
                for r in members:
                    proof = read_proof(session, w.seq, r.tree_index)
                    assert verify(unhex(w.root), unhex(r.leaf), proof)
            m = LotManifest.__table__.c  # type: ignore[attr-defined]
            manifests = sorted(session.execute(sa.select(m.lot_id, m.version, m.content)).all())
        assert [r.tree_index is None for r in rows] == [r.window_seq is None for r in rows]
        seen[run] = ([w.window_id for w in wins], [(r.id, r.window_seq) for r in rows], manifests)
        engine.dispose()
    assert len(seen["a"][0]) >= 2 and any(seq is None for _, seq in seen["a"][1])
    assert seen["a"] == seen["b"]
