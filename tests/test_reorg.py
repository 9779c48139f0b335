"""Reorganisations and resets of the chain against a real anvil: an anchor the chain no longer holds is an
anchoring state (pending, re-queued, with the reason), never tampering; an anchor re-included elsewhere
still verifies; a ledger window rewritten behind a forged transaction stays tampered; and no cached
answer of the API says more than API_VERIFY_CACHE_S old (issue 11, item 7)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select
from typer.testing import CliRunner

from api.app import create_app
from api.microcache import keep_for
from core.db import get_engine, migrate, session_scope
from core.services import ANVIL_DEV_KEY, Anvil
from core.services import anvil as make_anvil
from core.settings import Settings, get_settings
from ledger.anchor_models import ON_CHAIN, AnchorState, AnchorWindow, LedgerLeaf
from ledger.anchoring import Anchorer, PassReport, hex32, unhex
from ledger.bundle import lot_bundle
from ledger.bundle_verify import verify_bundle
from ledger.chain import Chain, ContractMismatch
from ledger.merkle import MerkleTree, leaf_hash
from ledger.models import Inspection, InspectionItem, Lot
from ledger.records import INSPECTION, canonical_bytes, record
from ledger.trace_io import load_demo_trace
from ledger.verify import PENDING, TAMPERED, UNVERIFIABLE, VERIFIED, Verification, verify_lot
from tests.api_fixtures import BAG, Template, world_settings
from tests.chain_fixtures import chain_settings

HTML = {"Accept": "text/html"}
REORG_WORDS = "dropped by a reorganisation"


# -- the ledger alone: records anchored on a fresh anvil, verified without InfluxDB ------------------------------


@dataclass
class Ledger:
    engine: Engine
    node: Anvil
    chain: Chain
    worker: Anchorer
    settings: Settings


def windows(engine: Engine) -> list[AnchorWindow]:
    with Session(engine) as session:
        return list(session.exec(select(AnchorWindow).order_by(AnchorWindow.seq)).all())


def anchor_all(worker: Anchorer, engine: Engine) -> None:
    """Passes of the worker until every window is in a block (anvil mines a moment after accepting)."""
    for _ in range(50):
        worker.run_once()
        if all(w.state in ON_CHAIN for w in windows(engine)):
            return
        time.sleep(0.1)
    raise AssertionError([(w.window_id, w.state, w.last_error) for w in windows(engine)])


def verify(engine: Engine, chain: Chain | None, settings: Settings, code: str = BAG) -> Verification:
    with Session(engine) as session:
        lot = session.exec(select(Lot).where(Lot.code == code)).one()
        return verify_lot(session, lot, chain, None, settings)


def start_ledger(folder: Path, **anvil_options: object) -> Ledger:
    node = make_anvil(folder / "anvil", **anvil_options)  # type: ignore[arg-type]
    node.start()
    url = f"sqlite:///{folder / 'registry.db'}"
    migrate(url)
    engine = get_engine(url)
    with Session(engine) as session:
        load_demo_trace(session)
        session.commit()
    settings = chain_settings(node, ANCHOR_WINDOW_SECONDS=0, ANCHOR_WINDOW_LEAVES=10_000, DATABASE_URL=url)
    chain = Chain.connect(settings, private_key=ANVIL_DEV_KEY)
    chain.ensure_contract(folder / "trace_anchor.json")
    worker = Anchorer(engine, settings, chain=chain)
    anchor_all(worker, engine)
    return Ledger(engine, node, chain, worker, settings)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    world = start_ledger(tmp_path)
    try:
        yield world
    finally:
        world.engine.dispose()
        world.node.stop()


def raw_tx(chain: Chain, tx_hash: str) -> str:
    return "0x" + bytes(chain.w3.eth.get_raw_transaction(unhex(tx_hash))).hex()


@pytest.mark.parametrize("moved", [True, False], ids=["another-block", "same-height-another-hash"])
def test_anchor_re_included_by_a_reorg_still_verifies(ledger: Ledger, moved: bool) -> None:
    (w,) = windows(ledger.engine)
    assert w.tx_hash and w.block_number and verify(ledger.engine, ledger.chain, ledger.settings).status == VERIFIED
    with Session(ledger.engine) as session:
        lot = session.exec(select(Lot).where(Lot.code == BAG)).one()
        bundle = lot_bundle(session, lot, ledger.chain, None, ledger.settings)  # made before the reorg
    raw = raw_tx(ledger.chain, w.tx_hash)
    if moved:  # one block on top, then both replaced: the anchor lands one block later
        ledger.node.rpc("anvil_mine", "0x1")
        ledger.node.rpc("anvil_reorg", 2, [[raw, 1]])
    else:  # the block is replaced by another at the same height holding the same transaction
        ledger.node.rpc("anvil_reorg", 1, [[raw, 0]])
    on_chain = ledger.chain.anchor_of(w.root)
    assert on_chain is not None and on_chain.block_number == w.block_number + (1 if moved else 0)
    v = verify(ledger.engine, ledger.chain, ledger.settings)
    assert v.status == VERIFIED and v.counts[TAMPERED] == 0, v.reason
    assert all(c.block_number == on_chain.block_number and c.tx_hash == w.tx_hash for c in v.records)
    assert all("re-included by a reorganisation" in c.reasons[0] for c in v.records)
    checked = verify_bundle(bundle, ledger.node.url, chain_id=ledger.chain.chain_id, contract=ledger.chain.address)
    assert checked.ok, checked.problems[:3]
    assert all("re-included the anchor" in r.notes[0] for r in checked.records)
    ledger.worker.run_once()  # the worker records where the anchor is now
    (after,) = windows(ledger.engine)
    assert after.block_number == on_chain.block_number and after.block_hash != w.block_hash
    v = verify(ledger.engine, ledger.chain, ledger.settings)
    assert v.status == VERIFIED and not any(c.reasons for c in v.records)


def test_dropped_anchor_is_pending_until_the_worker_sends_it_again(ledger: Ledger) -> None:
    (w,) = windows(ledger.engine)
    with Session(ledger.engine) as session:
        lot = session.exec(select(Lot).where(Lot.code == BAG)).one()
        bundle = lot_bundle(session, lot, ledger.chain, None, ledger.settings)
    ledger.node.rpc("anvil_reorg", 1, [])  # the block with the anchor is replaced by an empty one
    v = verify(ledger.engine, ledger.chain, ledger.settings)  # the worker has not noticed yet
    assert v.status == PENDING and v.counts[TAMPERED] == 0 and v.requeued == [w.window_id]
    assert REORG_WORDS in (v.reason or "") and all(c.anchor_state == AnchorState.requeued for c in v.records)
    checked = verify_bundle(bundle, ledger.node.url, chain_id=ledger.chain.chain_id, contract=ledger.chain.address)
    assert not checked.ok and all("not anchored now" in r.problems[0] for r in checked.records)
    with session_scope(ledger.engine) as session:  # the worker's next pass notices first, then sends
        ledger.worker.track(session, PassReport())
    assert windows(ledger.engine)[0].state == AnchorState.requeued
    v = verify(ledger.engine, ledger.chain, ledger.settings)
    assert v.status == PENDING and v.requeued == [w.window_id] and "re-sent" in (v.reason or "")
    anchor_all(ledger.worker, ledger.engine)
    assert verify(ledger.engine, ledger.chain, ledger.settings).status == VERIFIED


def test_attack_window_rewritten_behind_a_forged_transaction_stays_tampered(ledger: Ledger) -> None:
    """Whoever rewrites a record, its leaf, proof and window root, and names a transaction that never
    existed, must not make the lot look merely dropped by a reorganisation: the window's place on chain
    is taken (windowCount), so the ledger's window differs from what was anchored."""
    (w,) = windows(ledger.engine)
    with session_scope(ledger.engine) as session:
        insp = session.exec(select(Inspection).where(Inspection.passed == False)).first()  # noqa: E712
        assert insp is not None and insp.id is not None
        item = session.exec(select(InspectionItem).where(InspectionItem.inspection_id == insp.id)).first()
        assert item is not None
        item.value = 0.0  # the failing measurement made to look clean after anchoring
        session.add(item)
        session.flush()
        rows = list(session.exec(select(LedgerLeaf).where(LedgerLeaf.window_seq == w.seq)).all())
        (row,) = [r for r in rows if r.kind == INSPECTION and r.record_id == insp.id]
        row.canonical = canonical_bytes(record(session, INSPECTION, insp.id))
        row.leaf = hex32(leaf_hash(row.canonical))
        tree = MerkleTree.build([unhex(r.leaf) for r in rows])
        for r in rows:
            r.proof = [hex32(p) for p in tree.proof(unhex(r.leaf))]
            session.add(r)
        window = session.get(AnchorWindow, w.seq)
        assert window is not None
        window.root, window.tx_hash = hex32(tree.root), hex32(os.urandom(32))
        session.add(window)
        code = session.get(Lot, insp.lot_id).code  # type: ignore[union-attr]
    v = verify(ledger.engine, ledger.chain, ledger.settings, code)
    assert v.status == TAMPERED and v.counts[PENDING] == 0 and not v.requeued
    assert all("differs from what was anchored" in c.reasons[0] for c in v.records if c.window == w.window_id)


def test_no_contract_known_is_unverifiable_not_tampered(ledger: Ledger) -> None:
    v = verify(ledger.engine, None, ledger.settings)
    assert v.status == UNVERIFIABLE and v.counts[TAMPERED] == 0 and "TraceAnchor" in (v.reason or "")


def test_chain_reset_reads_unverifiable_then_pending_and_final_windows_are_sent_again(tmp_path: Path) -> None:
    world = start_ledger(tmp_path, slots_in_an_epoch=1)  # finalized = head - 2
    try:
        world.node.rpc("anvil_mine", "0x4")
        anchor_all(world.worker, world.engine)
        (w,) = windows(world.engine)
        assert w.state == AnchorState.final
        port = world.node.port
        world.node.stop()  # the devnet is reset: a new chain, without the contract or any anchor
        world.node = make_anvil(tmp_path / "anvil-again", port=port, slots_in_an_epoch=1)
        world.node.start()
        with pytest.raises(ContractMismatch, match="reset"):  # callers say "unverifiable", never "tampered"
            verify(world.engine, world.chain, world.settings)
        chain = Chain.connect(world.settings, private_key=ANVIL_DEV_KEY)
        chain.ensure_contract(tmp_path / "trace_anchor.json")  # the worker starts again: deploys again
        assert chain.address == world.chain.address  # the same key's first deployment
        v = verify(world.engine, chain, world.settings)
        assert v.status == PENDING and v.requeued == [w.window_id] and v.counts[TAMPERED] == 0
        worker = Anchorer(world.engine, world.settings, chain=chain)
        report = worker.run_once()
        assert report.states.get(w.window_id) in (AnchorState.requeued, *ON_CHAIN), report
        anchor_all(worker, world.engine)
        assert verify(world.engine, chain, world.settings).status == VERIFIED
    finally:
        world.engine.dispose()
        world.node.stop()


# -- the API and the CLI on the demo world ------------------------------------------------------------------------


@dataclass
class ApiWorld:
    settings: Settings
    engine: Engine
    node: Anvil
    chain: Chain
    worker: Anchorer

    def reorg_out_every_anchor(self) -> None:
        """A reorganisation that replaces every block from the first window's on: no anchor is left."""
        first = min(w.block_number or 0 for w in windows(self.engine))
        self.node.rpc("anvil_reorg", self.chain.head() - first + 1, [])
        assert all(self.chain.anchor_of(w.root) is None for w in windows(self.engine))


def api_world(template: Template, folder: Path, ttl: float) -> ApiWorld:
    """The demo registry (a copy of the API template) anchored again on an anvil of its own, which the
    test may reorganise (the template's anvil is shared by the session); the anchoring worker stopped."""
    node = make_anvil(folder / "anvil")  # default epochs: nothing is final for 64 blocks
    node.start()
    chain = Chain.connect(chain_settings(node), private_key=ANVIL_DEV_KEY)
    chain.ensure_contract(folder / "trace_anchor.json")
    settings = world_settings(
        template, folder / "world", CHAIN_RPC_URL=node.url, CHAIN_CONTRACT_ADDRESS=chain.address, API_VERIFY_CACHE_S=ttl
    )
    engine = get_engine(settings.resolved_database_url())
    with session_scope(engine) as session:  # the template's windows, sent again to this chain
        for w in session.exec(select(AnchorWindow)).all():
            Anchorer._clear(w, AnchorState.pending)
            session.add(w)
    worker = Anchorer(engine, settings, chain=chain)
    anchor_all(worker, engine)
    return ApiWorld(settings, engine, node, chain, worker)


@pytest.fixture
def world_factory(api_template: Template, tmp_path: Path) -> Iterator[list[ApiWorld]]:
    made: list[ApiWorld] = []
    yield made
    for w in made:
        w.engine.dispose()
        w.node.stop()


def settled(c: TestClient, path: str, headers: dict[str, str] | None = None) -> tuple[str, str, str]:
    """(status, body, Cache-Control) of a trace JSON or page once its badge is no longer "checking"."""
    for _ in range(300):
        r = c.get(path, headers=headers or {})
        assert r.status_code == 200, r.text[:300]
        if path.startswith("/api/"):
            status = r.json()["verification"]["status"]
        else:
            status = r.text.split('data-status="', 1)[1].split('"', 1)[0]
        if status != "checking":
            return status, r.text, r.headers["cache-control"]
        time.sleep(0.1)
    raise AssertionError(f"{path} still checking")


def next_check(c: TestClient, before: str) -> dict:  # type: ignore[type-arg]
    """The lot's /verify answer once it no longer says `before` (a verification started after the change)."""
    for _ in range(300):
        v = c.get(f"/api/v1/trace/{BAG}/verify").json()
        if v["status"] != before:
            return v  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"/verify still says {before}")


def cli_verify(world: ApiWorld, monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict]:  # type: ignore[type-arg]
    from cli.main import app

    s = world.settings
    for k, v in {
        "DATABASE_URL": s.resolved_database_url(),
        "CHAIN_RPC_URL": s.chain_rpc_url,
        "CHAIN_CONTRACT_ADDRESS": s.chain_contract_address,
        "INFLUX_URL": s.influx_url,
        "INFLUX_DB": s.influx_db,
        "VILLAGE_DATA_DIR": str(s.data_dir),
    }.items():
        monkeypatch.setenv(k, str(v))
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(app, ["verify", "M35C-W3XR-D6R", "--json"])
    finally:
        get_settings.cache_clear()
    assert out.exit_code in (0, 2, 3), out.output
    return out.exit_code, json.loads(out.output)


def test_fault_reorg_reads_as_pending_never_tampered(
    api_template: Template, tmp_path: Path, world_factory: list[ApiWorld], monkeypatch: pytest.MonkeyPatch
) -> None:
    ttl = 5.0  # longer than a check of the bag takes (else every lookup waits for its own check)
    world = api_world(api_template, tmp_path, ttl)
    world_factory.append(world)
    seen: list[str] = []
    with TestClient(create_app(world.settings)) as c:
        v = c.get(f"/api/v1/trace/{BAG}/verify").json()
        assert v["status"] == VERIFIED, v.get("reason")
        bag_windows = sorted({r["window"] for r in v["records"] if r["window"]})

        world.reorg_out_every_anchor()  # the worker is stopped: nothing re-sends yet
        time.sleep(ttl)
        v = next_check(c, VERIFIED)  # (the cache promise itself: the test below)
        seen.append(v["status"])
        assert v["status"] == PENDING and v["counts"][TAMPERED] == 0, v.get("reason")
        assert v["requeued"] == bag_windows and REORG_WORDS in v["reason"] and "re-sent" in v["reason"]
        assert all(r["anchor_state"] == AnchorState.requeued for r in v["records"] if r["window"])
        status, body, _ = settled(c, f"/api/v1/trace/{BAG}")
        seen.append(status)
        badge = json.loads(body)["verification"]
        assert status == PENDING and badge["requeued"] == bag_windows and REORG_WORDS in badge["reason"]
        for lang, words in (("zh", "这不是数据被篡改"), ("en", "This is not tampering")):
            status, page, _ = settled(c, f"/t/{BAG}", {**HTML, "Accept-Language": lang})
            seen.append(status)
            assert status == PENDING and 'id="requeued"' in page and words in page
        code, report = cli_verify(world, monkeypatch)
        seen.append(report["status"])
        assert code == 0 and report["status"] == PENDING and report["counts"][TAMPERED] == 0
        assert report["requeued"] == bag_windows and REORG_WORDS in report["reason"]

        with session_scope(world.engine) as session:  # the worker starts: its first pass notices the drop...
            world.worker.track(session, PassReport())
        assert all(w.state == AnchorState.requeued for w in windows(world.engine))
        code, report = cli_verify(world, monkeypatch)
        seen.append(report["status"])
        assert report["status"] == PENDING and report["requeued"] == bag_windows and "re-sent" in report["reason"]

        anchor_all(world.worker, world.engine)  # ...and sends the windows again
        time.sleep(ttl)
        v = next_check(c, PENDING)
        seen.append(v["status"])
        assert v["status"] == VERIFIED and not v["requeued"], v.get("reason")
        for path, headers in ((f"/api/v1/trace/{BAG}", {}), (f"/t/{BAG}", HTML)):
            status, _, _ = settled(c, path, headers)
            seen.append(status)
            assert status == VERIFIED
        code, report = cli_verify(world, monkeypatch)
        seen.append(report["status"])
        assert code == 0 and report["status"] == VERIFIED
    assert TAMPERED not in seen, seen


def test_cached_verified_is_not_served_beyond_the_ttl_after_the_anchor_disappears(
    api_template: Template, tmp_path: Path, world_factory: list[ApiWorld]
) -> None:
    ttl = 20.0  # above what a check of the bag takes, even on a busy machine
    world = api_world(api_template, tmp_path, ttl)
    world_factory.append(world)
    paths = [(f"/api/v1/trace/{BAG}", {}), (f"/t/{BAG}", HTML), (f"/t/{BAG}", {**HTML, "Accept-Language": "en"})]
    answers: list[tuple[float, str, str]] = []  # (seconds after the reorg, path, status)
    with TestClient(create_app(world.settings)) as c:
        assert c.get(f"/api/v1/trace/{BAG}/verify").json()["status"] == VERIFIED
        for path, headers in paths * 2:  # the JSON, the pages and the micro-cache hold "verified" now
            assert settled(c, path, headers)[0] == VERIFIED
        reorg_at = time.monotonic()
        world.reorg_out_every_anchor()
        while time.monotonic() < reorg_at + ttl + 3 or (
            answers[-1][2] in (VERIFIED, "checking") and time.monotonic() < reorg_at + ttl + 90
        ):
            for path, headers in [*paths, (f"/api/v1/trace/{BAG}/verify", {})]:
                sent = time.monotonic() - reorg_at
                r = c.get(path, headers=headers)
                assert r.status_code == 200
                if path.endswith("/verify"):
                    status = r.json()["status"]
                elif path.startswith("/api/"):
                    status = r.json()["verification"]["status"]
                else:
                    status = r.text.split('data-status="', 1)[1].split('"', 1)[0]
                kept = dict(re.findall(r"([a-z-]+)=(\d+)", r.headers["cache-control"]))
                if kept:  # (else no-store, "checking") a browser's copy expires with ours
                    assert int(kept["s-maxage"]) <= int(kept["max-age"]) <= ttl
                    assert int(r.headers.get("age", 0)) <= int(kept["s-maxage"])
                answers.append((sent, path, status))
            time.sleep(0.2)
    assert answers[0][2] == VERIFIED  # the cached answer was in use right after the reorg, but never beyond the TTL:
    late = [a for a in answers if a[0] >= ttl]
    assert late and not [a for a in late if a[2] == VERIFIED], [a for a in late if a[2] == VERIFIED][:5]
    assert answers[-1][2] == PENDING and TAMPERED not in {a[2] for a in answers}


def test_micro_cache_keeps_an_answer_until_its_re_check_is_due() -> None:
    """Shared caches keep an answer until its verification is due for a re-check (s-maxage), so that a
    lookup then reaches the service and starts one; browsers until it expires (max-age)."""
    assert keep_for([(b"cache-control", b"public, max-age=50, s-maxage=20")], 60) == 20
    assert keep_for([(b"cache-control", b"public, max-age=50")], 60) == 50
    assert keep_for([(b"cache-control", b"public, max-age=90")], 60) == 60
    assert keep_for([(b"cache-control", b"no-store")], 60) == 0
    assert keep_for([], 60) == 60
