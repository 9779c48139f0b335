"""Proof bundles that lie, against a real anvil and InfluxDB (the demo season anchored, as in
tests/test_verify.py): records re-anchored in a TraceAnchor deployed by anyone, a failed inspection
left out of an evidence bundle, a record of another lot slipped in, a subject that claims more than
its records, and an older manifest presented instead of the newest. The verifier takes the chain id
and contract from its caller and checks the bundle's subject against its anchored manifests."""

# ruff: noqa: F811  (the world, chain and anvil fixtures come from tests/test_verify.py)

from __future__ import annotations

import copy
import json
import time
from datetime import date
from pathlib import Path
from typing import Any

import rfc8785
from sqlmodel import Session, select
from typer.testing import CliRunner

from cli.main import app
from core.models import Farm
from core.settings import get_settings
from ledger.anchoring import Anchorer
from ledger.bundle import lot_bundle, production_bundle
from ledger.bundle_verify import BundleResult, verify_bundle
from ledger.chain import Chain
from ledger.merkle import MerkleTree, leaf_hash
from ledger.models import Inspection
from ledger.verify import VERIFIED
from tests.chain_fixtures import OTHER_DEV_KEY, chain_settings
from tests.test_verify import BAG, OTHER_BAG, anvil, base, chain, check, lot, world  # noqa: F401  (fixtures)

ZERO = "0x" + "00" * 32


def verified(bundle: dict[str, Any], anvil_url: str, chain: Chain, contract: str | None = None) -> BundleResult:
    return verify_bundle(bundle, anvil_url, chain_id=chain.chain_id, contract=contract or chain.address)


def _canonical(record: dict[str, Any]) -> str:
    return rfc8785.dumps(record).decode()


def _leaf(canonical: str) -> str:
    return "0x" + leaf_hash(canonical.encode()).hex()


def reanchor_in_rogue_contract(honest: dict[str, Any], rogue: Chain) -> dict[str, Any]:
    """The lying bundle: the bag lot's quantity 2,000 -> 20,000, its manifests rewritten to list the
    new leaf, every record re-proven against one window anchored in `rogue`, `chain.contract` = rogue."""
    lying = copy.deepcopy(honest)
    (lot_entry,) = [r for r in lying["records"] if json.loads(r["canonical"])["content"].get("code") == BAG]
    record = json.loads(lot_entry["canonical"])
    assert record["content"]["quantity"] == 2000
    record["content"]["quantity"] = 20000
    old_leaf = lot_entry["leaf"]
    lot_entry["canonical"] = _canonical(record)
    lot_entry["leaf"] = _leaf(lot_entry["canonical"])
    for entry in lying["records"]:
        if entry["kind"] == "manifest/1":
            m = json.loads(entry["canonical"])
            m["content"]["leaves"] = sorted(lot_entry["leaf"] if x == old_leaf else x for x in m["content"]["leaves"])
            entry["canonical"] = _canonical(m)
            entry["leaf"] = _leaf(entry["canonical"])
    tree = MerkleTree.build([bytes.fromhex(r["leaf"][2:]) for r in lying["records"]])
    root = "0x" + tree.root.hex()
    tx = rogue.send_anchor(tree.root, bytes(32), len(lying["records"]), "w000001")
    rogue.wait_mined(tx)
    receipt = rogue.receipt(tx)
    assert receipt is not None and receipt.ok
    window = {
        "id": "w000001",
        "root": root,
        "prev_root": ZERO,
        "leaf_count": len(lying["records"]),
        "state": "final",
        "tx_hash": "0x" + receipt.tx_hash.hex(),
        "block_number": receipt.block_number,
        "block_hash": "0x" + receipt.block_hash.hex(),
        "log_index": receipt.log_index,
    }
    for entry in lying["records"]:
        entry["proof"] = ["0x" + p.hex() for p in tree.proof(bytes.fromhex(entry["leaf"][2:]))]
        entry["window"] = dict(window)
    lying["chain"] = {"chain_id": rogue.chain_id, "contract": rogue.address}
    return lying


def test_attack_bundle_reanchored_in_rogue_contract(world, chain: Chain, anvil, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine, influx, settings = world
    with Session(engine) as session:
        honest = lot_bundle(session, lot(session, BAG), chain, influx, settings)
    assert verified(honest, anvil.url, chain).ok
    rogue = Chain.connect(chain_settings(anvil), private_key=OTHER_DEV_KEY)  # anyone, with gas
    rogue.deploy()
    lying = reanchor_in_rogue_contract(honest, rogue)
    # The lie is a real proof in the rogue contract: checked against that contract it holds together.
    assert verified(lying, anvil.url, chain, contract=rogue.address).ok
    # Against the county's contract, given by the caller, it fails and says why.
    result = verified(lying, anvil.url, chain)
    assert not result.ok
    assert any(rogue.address in p and "not the expected TraceAnchor" in p for p in result.problems), result.problems
    assert not any(r.ok for r in result.records)
    assert all(any("not recorded by the expected contract" in p for p in r.problems) for r in result.records)
    # A bundle that keeps the official address but carries the rogue windows fails as well.
    relabelled = {**lying, "chain": honest["chain"]}
    assert not verified(relabelled, anvil.url, chain).ok
    # Another chain id than the caller's: refused before any record is looked at.
    wrong_chain = verify_bundle(honest, anvil.url, chain_id=1, contract=chain.address)
    assert not wrong_chain.ok and "not the expected chain 1" in wrong_chain.problems[0]

    # The CLI: refuses to run without the county's values, and fails the lying bundle with its reason.
    path = tmp_path / "lying.json"
    path.write_text(json.dumps(lying))
    for name in ("CHAIN_ID", "CHAIN_CONTRACT_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHAIN_RPC_URL", anvil.url)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        out = runner.invoke(app, ["verify-bundle", str(path)], env={"COLUMNS": "300"})
        assert out.exit_code == 2 and "publishes" in out.output and "never the ones written in the bundle" in out.output
        out = runner.invoke(
            app,
            ["verify-bundle", str(path), "--chain-id", str(chain.chain_id), "--contract", chain.address],
            env={"COLUMNS": "300"},
        )
        assert out.exit_code == 3 and "not the expected TraceAnchor" in out.output, out.output
        assert "bundle FAILED" in out.output
    finally:
        get_settings.cache_clear()


def test_attack_evidence_bundle_with_failed_inspection_removed(world, chain: Chain, anvil) -> None:  # type: ignore[no-untyped-def]
    engine, influx, settings = world
    with Session(engine) as session:
        failed = session.exec(select(Inspection).where(Inspection.passed == False)).first()  # noqa: E712
        assert failed is not None
        farm = session.get(Farm, lot_farm_id(session, failed.lot_id))
        assert farm is not None
        honest = production_bundle(session, farm, 2026, chain, influx, settings)
    result = verified(honest, anvil.url, chain)
    assert result.ok, result.problems[:3]
    assert honest["subject"]["inspections"]["passed"] < honest["subject"]["inspections"]["total"]

    lying = copy.deepcopy(honest)
    (gone,) = [r for r in lying["records"] if r["kind"] == "inspection/1" and '"passed":false' in r["canonical"]]
    lying["records"].remove(gone)
    lying["subject"]["inspections"] = {
        "total": honest["subject"]["inspections"]["passed"],
        "passed": honest["subject"]["inspections"]["passed"],
    }
    result = verified(lying, anvil.url, chain)
    assert all(r.ok for r in result.records)  # every record left in it is genuine...
    assert not result.ok  # ...but the lot's anchored manifest lists the one left out
    (missing,) = [p for p in result.problems if "does not prove" in p]
    assert "1 inspection/1" in missing and gone["leaf"] in missing
    assert any(gone["leaf"] in m.missing and m.missing_by_kind == {"inspection/1": 1} for m in result.manifests)

    # Leaving out the manifests too: the subject's lots have no anchored manifest to check against.
    no_manifests = copy.deepcopy(lying)
    no_manifests["records"] = [r for r in no_manifests["records"] if r["kind"] != "manifest/1"]
    result = verified(no_manifests, anvil.url, chain)
    assert not result.ok and any("no anchored manifest" in p for p in result.problems)
    # Moving it to `pending` (shown, not provable) does not help either.
    as_pending = copy.deepcopy(lying)
    as_pending["pending"].append({k: gone[k] for k in ("kind", "canonical", "leaf")})
    assert not verified(as_pending, anvil.url, chain).ok


def lot_farm_id(session: Session, lot_id: int) -> int:
    from ledger.models import Lot

    row = session.get(Lot, lot_id)
    assert row is not None and row.farm_id is not None
    return row.farm_id


def test_attack_evidence_subject_claims_more_than_its_records(world, chain: Chain, anvil) -> None:  # type: ignore[no-untyped-def]
    engine, influx, settings = world
    with Session(engine) as session:
        farm = session.exec(select(Farm).where(Farm.code == "PS-F001")).first()
        assert farm is not None
        honest = production_bundle(session, farm, 2026, chain, influx, settings)
    assert verified(honest, anvil.url, chain).ok
    lying = copy.deepcopy(honest)
    lying["subject"]["lots"][0]["quantity"] *= 10
    lying["subject"]["monitored_days"] += 30
    result = verified(lying, anvil.url, chain)
    assert not result.ok
    assert any("quantity" in p for p in result.problems) and any("monitored days" in p for p in result.problems)
    assert "area_mu" in result.unproven  # registry facts no anchored record covers are said to be unproven


def test_attack_bundle_with_record_of_another_lot(world, chain: Chain, anvil) -> None:  # type: ignore[no-untyped-def]
    engine, influx, settings = world
    with Session(engine) as session:
        bag = lot_bundle(session, lot(session, BAG), chain, influx, settings)
        other = lot_bundle(session, lot(session, OTHER_BAG), chain, influx, settings)
    ours = {r["leaf"] for r in bag["records"]}
    foreign = next(r for r in other["records"] if r["leaf"] not in ours and r["kind"] == "inspection/1")
    lying = copy.deepcopy(bag)
    lying["records"].append(foreign)  # a genuine, anchored record, but of another lot's trace
    result = verified(lying, anvil.url, chain)
    assert all(r.ok for r in result.records)
    assert not result.ok and any(foreign["leaf"] in p and "not part of this trace" in p for p in result.problems)


def test_attack_bundle_presents_older_manifest(world, chain: Chain, anvil) -> None:  # type: ignore[no-untyped-def]
    """A failed inspection added after the bag's first manifest was anchored: its second manifest lists
    it. Dropping the inspection while keeping both manifests fails; dropping the newer manifest too
    cannot be caught from the chain alone (windows hold only roots), and the result says so: the
    manifest presented is not provably the newest, with the number of windows anchored after it."""
    engine, influx, settings = world
    with Session(engine) as session:
        bag = lot(session, BAG)
        session.add(
            Inspection(
                lot_id=bag.id, lab="Panjin lab", report_no="LATE-001", sampled_on=date(2026, 11, 2), passed=False
            )
        )
        session.commit()
    worker = Anchorer(engine, settings, chain=chain, influx=influx)
    for _ in range(50):  # anvil may mine a moment after accepting: the next pass records it
        worker.run_once()
        if check(engine, chain, influx, settings).status == VERIFIED:
            break
        time.sleep(0.1)
    with Session(engine) as session:
        honest = lot_bundle(session, lot(session, BAG), chain, influx, settings)
    manifests = [r for r in honest["records"] if r["kind"] == "manifest/1"]
    assert len(manifests) == 2
    result = verified(honest, anvil.url, chain)
    assert result.ok, result.problems
    (newest,) = [m for m in result.manifests if m.newest_in_bundle]
    assert newest.provably_newest and newest.later_windows == 0

    (late,) = [r for r in honest["records"] if "LATE-001" in r["canonical"]]
    without = copy.deepcopy(honest)
    without["records"] = [r for r in without["records"] if r["leaf"] != late["leaf"]]
    result = verified(without, anvil.url, chain)
    assert not result.ok and any(late["leaf"] in p for p in result.problems)

    # Both the late inspection and the manifest that lists it dropped: the older manifest is complete.
    newer = max(manifests, key=lambda r: r["window"]["block_number"])
    older_only = copy.deepcopy(without)
    older_only["records"] = [r for r in older_only["records"] if r["leaf"] != newer["leaf"]]
    result = verified(older_only, anvil.url, chain)
    (presented,) = [m for m in result.manifests if m.newest_in_bundle]
    assert not presented.provably_newest and presented.later_windows is not None and presented.later_windows >= 1
