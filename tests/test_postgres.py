"""The registry and ledger on a real PostgreSQL (the deployment database), not only SQLite:
migrations apply, the demo imports, and every trace record means the same bytes in both."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

import core.db
from core.db import driver_value, get_engine, insert_many, migrate
from core.services import Postgres
from core.settings import Settings
from ledger.anchor_models import AnchorWindow, LedgerLeaf, LotManifest
from ledger.anchoring import Anchorer
from ledger.merkle import verify
from ledger.models import Lot
from ledger.proofs import proof_of
from ledger.records import record
from ledger.trace_io import load_demo_trace


def demo(url: str) -> Engine:
    migrate(url)
    engine = get_engine(url)
    with Session(engine) as session:
        load_demo_trace(session)
        session.commit()
    Anchorer(engine, Settings(_env_file=None, DATABASE_URL=url)).run_once()  # type: ignore[call-arg]
    return engine


def contents(engine: Engine) -> dict[tuple[str, int], dict]:
    """Every record without its salt (a manifest lists salted leaves: compare its lot and counts)."""
    out = {}
    with Session(engine) as session:
        for leaf in session.exec(select(LedgerLeaf)):
            rec = record(session, leaf.kind, leaf.record_id)
            content = rec["content"]
            if leaf.kind == "manifest/1":
                content = {"lot": content["lot"], "counts": content["counts"], "n": len(content["leaves"])}
            out[(leaf.kind, leaf.record_id)] = {"schema": rec["schema"], "content": content}
    return out


def test_migrations_demo_and_records_are_the_same_on_postgresql(pg: Postgres, tmp_path: Path) -> None:
    on_pg = demo(pg.create_database("village_test"))
    on_sqlite = demo(f"sqlite:///{tmp_path / 'registry.db'}")
    a, b = contents(on_pg), contents(on_sqlite)
    assert len(a) > 60 and a.keys() == b.keys()
    assert a == b  # the same facts, the same record content, whichever database holds them
    with Session(on_pg) as session:
        manifests = session.exec(select(LotManifest)).all()
        assert manifests and all(m.content["leaves"] for m in manifests)
    # windows closed on PostgreSQL: every proof read back from its tree pages leads to the root
    Anchorer(on_pg, Settings(_env_file=None, DATABASE_URL=pg.url("village_test"))).run_once(force_window=True)  # type: ignore[call-arg]
    with Session(on_pg) as session:
        roots = {w.seq: bytes.fromhex(w.root[2:]) for w in session.exec(select(AnchorWindow))}
        rows = session.exec(select(LedgerLeaf)).all()
        assert roots and all(r.window_seq in roots for r in rows)
        for r in rows:
            proof = [bytes.fromhex(p[2:]) for p in proof_of(session, r)]
            assert verify(roots[r.window_seq], bytes.fromhex(r.leaf[2:]), proof), r.id
    migrate(pg.url("village_test"))  # idempotent
    on_pg.dispose()
    on_sqlite.dispose()


def test_officer_roles_are_stored_on_postgresql(pg: Postgres) -> None:
    """Migration 0012 adds city_officer and province_officer to PostgreSQL's `role` enum type."""
    from api.models import User
    from api.users import add_user
    from core.registry_io import load_demo
    from core.scope import area_of

    url = pg.create_database("officers")
    migrate(url)
    engine = get_engine(url)
    with Session(engine) as session:
        load_demo(session)
        add_user(session, "panjin", "officer-password", "city_officer", "211100")
        add_user(session, "liaoning", "officer-password", "province_officer", "210000")
        session.commit()
    with Session(engine) as session:
        roles = {u.username: str(u.role) for u in session.exec(select(User))}
        assert roles == {"panjin": "city_officer", "liaoning": "province_officer"}
        assert area_of(session, "city_officer", "211100").counties == {"211122"}
        assert area_of(session, "province_officer", "210000").counties == {"211122"}
    engine.dispose()


def test_update_ints_sets_the_same_rows_on_postgresql_and_sqlite(
    pg: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The anchoring worker places a window's leaves with `update_ints`: one statement over arrays per
    chunk on PostgreSQL, a statement per row on SQLite; both set exactly the rows asked, no other."""
    monkeypatch.setattr(core.db, "UPDATE_CHUNK", 7)  # several chunks on PostgreSQL
    table = LedgerLeaf.__table__  # type: ignore[attr-defined]
    got = {}
    for name, url in (("pg", pg.create_database("update_ints")), ("sqlite", f"sqlite:///{tmp_path / 'u.db'}")):
        migrate(url)
        engine = get_engine(url)
        with Session(engine) as session:
            session.add(
                AnchorWindow(
                    seq=3, window_id="w000003", root="0x" + "11" * 32, prev_root="0x" + "00" * 32, leaf_count=20
                )
            )
            now = driver_value(session, table, "created_at", datetime.now(UTC))
            insert_many(
                session,
                table,
                ("kind", "record_id", "leaf", "canonical", "created_at"),
                [("lot/1", i, f"0x{i:064x}", b"{}", now) for i in range(30)],
            )
            ids = sorted(session.exec(select(LedgerLeaf.id)).all())  # type: ignore[arg-type]
            chosen = ids[5:25]
            core.db.update_ints(
                session, table, "id", chosen, {"window_seq": 3}, {"tree_index": [40 - k for k in range(20)]}
            )
            session.commit()
            rows = session.exec(select(LedgerLeaf).order_by(LedgerLeaf.id)).all()
            got[name] = [(r.record_id, r.window_seq, r.tree_index) for r in rows]
        engine.dispose()
    expected = [(i, 3, 40 - (i - 5)) if 5 <= i < 25 else (i, None, None) for i in range(30)]
    assert got["pg"] == got["sqlite"] == expected


def test_a_large_pass_holds_its_rows_and_places_them_on_postgresql(
    pg: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass whose trace records go to child processes holds its leaf rows until its windows are
    built (ledger.anchoring._Held) and writes them with their places on PostgreSQL too; a later one
    asks which lots its records touch before storing any (manifest.lots_to_check(session, None))."""
    from bench.anchor_world import generate
    from ledger import anchoring

    monkeypatch.setattr(anchoring, "LEAF_CHUNK", 100)  # more chunks than SPREAD_CHUNKS: children, held rows
    url = pg.create_database("village_held")
    migrate(url)
    engine = get_engine(url)
    with Session(engine) as session:
        load_demo_trace(session)
        session.commit()
    settings = Settings(_env_file=None, DATABASE_URL=url, ANCHOR_PROCESSES=2, ANCHOR_WINDOW_LEAVES=400)  # type: ignore[call-arg]
    worker = Anchorer(engine, settings)
    for records, seed in ((900, 3), (700, 4)):
        generate(engine, records, seed)
        report = worker.run_once(force_window=True)
        assert "hold_leaves" in report.timings and report.children == 2 and len(report.windows) >= 2
    with Session(engine) as session:
        roots = {w.seq: bytes.fromhex(w.root[2:]) for w in session.exec(select(AnchorWindow))}
        rows = session.exec(select(LedgerLeaf)).all()
        assert len(rows) > 1600 and all(r.window_seq in roots for r in rows)
        for r in rows:
            proof = [bytes.fromhex(p[2:]) for p in proof_of(session, r)]
            assert verify(roots[r.window_seq], bytes.fromhex(r.leaf[2:]), proof), r.id
        lots = set(session.exec(select(Lot.id)).all())
        assert lots == {m.lot_id for m in session.exec(select(LotManifest))}  # the second pass's lots too
    engine.dispose()
