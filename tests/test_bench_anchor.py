"""`village bench anchor` on 2,000 records: its JSON line, and the record it verified checked again here,
against the same chain, untouched and then tampered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session, select

from core.db import make_engine
from core.services import ANVIL_DEV_KEY, Anvil
from ledger.anchor_models import ON_CHAIN, AnchorWindow, LedgerLeaf
from ledger.chain import Chain
from ledger.records import RecordRef
from ledger.verify import TAMPERED, VERIFIED, check_record
from tests.chain_fixtures import chain_settings

ROOT = Path(__file__).resolve().parents[1]
FIELDS = [
    "bench",
    "records",
    "canonical_s",
    "leaves_s",
    "tree_s",
    "proofs_s",
    "store_s",
    "anchor_s",
    "end_to_end_s",
    "peak_rss_mb",
    "verify_us_median",
    "verify_us_p99",
    "gas_1",
    "gas_1000",
    "cores",
]


def test_bench_anchor_prints_its_figures_and_the_verified_record_verifies(tmp_path: Path, anvil: Anvil) -> None:
    keep = tmp_path / "bench"
    command = [sys.executable, "-m", "cli.main", "bench", "anchor", "--records", "2000", "--verify-samples", "100"]
    out = subprocess.run(
        [*command, "--keep", str(keep), "--rpc-url", anvil.url],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])  # the last line: one JSON object
    assert set(FIELDS) | {"gas_2000"} <= set(r), set(FIELDS) - set(r)
    assert r["bench"] == "anchor" and r["records"] == 2000 and r["cores"] == 1
    for key in ("canonical_s", "leaves_s", "tree_s", "proofs_s", "store_s", "anchor_s"):
        assert 0 <= r[key] <= r["end_to_end_s"], key
    assert 0 < r["verify_us_median"] <= r["verify_us_p99"]
    assert r["end_to_end_cpu_s"] > 0
    assert r["peak_rss_mb"] > 0
    # gas per window does not grow with its size (the same transaction, some calldata bytes apart)
    assert r["gas_1"] < r["first_window_gas"]
    assert max(r["gas_1"], r["gas_1000"], r["gas_2000"]) - min(r["gas_1"], r["gas_1000"], r["gas_2000"]) < 500

    engine = make_engine(f"sqlite:///{keep / 'registry.db'}")
    settings = chain_settings(anvil, CHAIN_CONTRACT_ADDRESS=r["contract"])
    chain = Chain.connect(settings, private_key=ANVIL_DEV_KEY)
    chain.ensure_contract(None)
    ref = RecordRef(r["verified_record"]["kind"], r["verified_record"]["id"])
    with Session(engine) as session:
        window = session.exec(select(AnchorWindow).where(AnchorWindow.leaf_count == 2000)).one()
        assert window.state in ON_CHAIN
        in_window = session.exec(
            select(sa.func.count()).select_from(LedgerLeaf).where(LedgerLeaf.window_seq == window.seq)
        ).one()
        assert in_window == 2000  # every record of the run in the one window, each with its proof's place
        assert check_record(session, ref, chain, None, settings).status == VERIFIED
        session.execute(sa.text("UPDATE inspection SET lab = lab || ' (altered)' WHERE id = :i"), {"i": ref.id})
        check = check_record(session, ref, chain, None, settings)
        assert check.status == TAMPERED, check
        session.rollback()
    engine.dispose()
