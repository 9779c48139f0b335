"""`village bench anchor`: a million trace records from the database to the chain, through the worker.

What it does, in order:

1. setup (not timed): a fresh database (SQLite file, or a PostgreSQL cluster of its own) with the
   demo county, anchored in a first window on its own anvil (`first_window_gas`); then the rows
   of `records` trace records made in bulk (bench/anchor_world.py: lots, field and processing
   events, inspections, corrections of a county's rice chain; a lot manifest per lot is made by
   the worker and counts as a record), in a child process, so its memory is not ours;
2. timed, `end_to_end_s`: one pass of the anchoring worker (`Anchorer.run_once`, production code,
   ANCHOR_WINDOW_LEAVES = records so that one window holds them all): records built from the
   rows (`records_s`), RFC 8785 canonical JSON with their salts (`canonical_s`), double-keccak
   leaves (`leaves_s`), lot manifests (`manifests_s`; `plan_manifests_s`, each lot's records found
   while the worker waits for its children, apart), the Merkle tree (`tree_s`), every proof
   (`proofs_s`: each leaf's place in the tree, whose nodes are stored in pages, ledger/proofs.py),
   all of it written and committed (`store_s`), the window anchored on anvil and its receipt
   tracked (`anchor_s`); then one record verified from the database through the chain
   (`ledger.verify.check_record`: record rebuilt from its rows, leaf, proof read back, root
   checked on the contract; `verify_record_ms`);
3. after: one proof check (`ledger.merkle.verify` on a proof read from the database) timed on
   `verify_samples` random leaves (`verify_us_median`, `verify_us_p99`; reading the proof is
   `proof_read_us_median`), the contract's own check over RPC, and the gas of windows of 1,
   1,000 and `records` leaves, anchored by the same worker (`gas_1`, `gas_1000`, `gas_<records>`).

Phases are wall-clock seconds of the worker process; `end_to_end_cpu_s` is the CPU time this
process spent in step 2 (user + system; anvil's not in it), which says how loaded the machine was
when set against `end_to_end_s`. When the pass has more than SPREAD_CHUNKS chunks (LEAF_CHUNK) of
trace rows, child processes build records, canonical JSON and leaves while the worker stores
(ANCHOR_PROCESSES, default one per core; ledger/leafwork.py): `cores` is then the cores the pass
keeps busy (children and worker, at most the machine's; else 1); `records_s`, `canonical_s` and
`leaves_s` are the children's seconds summed (they overlap each other and the worker's storing, so
they may add up to more than the pass); `children_cpu_s` is their CPU time (their start included),
`wait_children_s` the worker's waits for them and `start_children_s` their start.

`peak_rss_mb` is this process's peak resident memory over its whole life up to the end of step 2
(`getrusage(RUSAGE_SELF).ru_maxrss`: migrations, the demo county and the worker's pass; the worker
is what peaks); `peak_rss_leaf_children_mb` the largest peak of one leaf-building child, and
`peak_rss_total_mb` their sum over the pass (this process's peak plus each child's at the largest: a
bound, the peaks need not coincide). Not in it, and reported beside it: the child that made the
rows (`peak_rss_children_mb`, RUSAGE_CHILDREN, setup; it also covers the leaf children) and anvil
(`anvil_peak_rss_mb`, its VmHWM); PostgreSQL's processes are not measured. The worker shares the
machine's `machine_cores` with anvil (and PostgreSQL).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from core.db import make_engine, migrate
from core.services import ANVIL_DEV_KEY, anvil, postgres
from core.settings import Settings
from ledger.anchor_models import AnchorWindow, LedgerLeaf, LedgerTreePage
from ledger.anchoring import Anchorer, unhex
from ledger.chain import Chain
from ledger.merkle import verify
from ledger.proofs import read_proof
from ledger.records import INSPECTION, RecordRef
from ledger.trace_io import load_demo_trace
from ledger.verify import VERIFIED, check_record

# the pass's timings summed in store_s: hold_leaves is a large pass's leaf rows held in a temporary file
# until their windows are built, place_leaves the UPDATE of leaves that waited from an earlier pass
STORE_STEPS = ("hold_leaves", "store_leaves", "store_proofs", "place_leaves", "commit")


def _generate(url: str, records: int, seed: int) -> None:
    from bench.anchor_world import generate

    engine = make_engine(url)
    generate(engine, records, seed)
    engine.dispose()


def _in_child(url: str, records: int, seed: int) -> float:
    """Make the rows in a child process; returns the seconds it took."""
    start = time.perf_counter()
    proc = multiprocessing.get_context("spawn").Process(target=_generate, args=(url, records, seed))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"making the benchmark's records failed (exit code {proc.exitcode})")
    return time.perf_counter() - start


def _rss_mb(who: int) -> float:
    """Peak resident memory (`getrusage` ru_maxrss, KiB on Linux) of this process (RUSAGE_SELF) or of
    the largest of its children waited for (RUSAGE_CHILDREN), in MiB."""
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def _process_hwm_mb(pid: int | None) -> float | None:
    """A running process's peak resident memory (Linux VmHWM), e.g. anvil's; None where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def _anchor_more(engine: Any, settings: Settings, chain: Chain, records: int, window: int, seed: int) -> list[int]:
    """Gas of the windows of `window` leaves made from `records` more records (worker, production code)."""
    url = settings.resolved_database_url()
    _in_child(url, records, seed)
    worker = Anchorer(engine, settings.model_copy(update={"anchor_window_leaves": window}), chain=chain)
    report = worker.run_once()
    with Session(engine) as session:
        rows = session.exec(select(AnchorWindow).where(AnchorWindow.window_id.in_(report.windows))).all()  # type: ignore[attr-defined]
    assert all(w.leaf_count == window and w.gas_used for w in rows), [(w.leaf_count, w.state) for w in rows]
    return [w.gas_used for w in rows if w.gas_used]


def _database_bytes(engine: Any, folder: Path) -> dict[str, int]:
    """Bytes the ledger's leaf rows and proof pages take (SQLite: the dbstat table; PostgreSQL: relation sizes)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            sizes = {
                t: conn.execute(sa.text(f"SELECT pg_total_relation_size('{t}')")).scalar()
                for t in ("ledger_leaf", "ledger_tree_page")
            }
        else:
            try:
                rows = conn.execute(sa.text("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")).all()
                by_name = dict(rows)
                sizes = {
                    "ledger_leaf": sum(v for k, v in by_name.items() if "ledger_leaf" in k),
                    "ledger_tree_page": sum(v for k, v in by_name.items() if "ledger_tree_page" in k),
                }
            except sa.exc.OperationalError:  # SQLite built without dbstat
                sizes = {}
    return {k: int(v or 0) for k, v in sizes.items()}


def run(
    records: int = 1_000_000,
    database: str = "sqlite",
    verify_samples: int = 2000,
    seed: int = 7,
    keep: Path | None = None,
    rpc_url: str | None = None,
) -> dict[str, Any]:
    """The figures (see the module's docstring). `keep`: a folder that keeps the database (and anvil's
    files) afterwards; `rpc_url`: a running anvil to anchor on (a contract of its own is deployed:
    `contract`) instead of starting one."""
    if database not in ("sqlite", "postgres"):
        raise ValueError("database: sqlite or postgres")
    figures: dict[str, Any] = {"bench": "anchor", "records": records, "database": database, "load_before": _load()}
    folder = Path(tempfile.mkdtemp(prefix="village-bench-anchor-")) if keep is None else keep
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # PostgreSQL runs as its own user
    node = anvil(folder / "anvil") if rpc_url is None else None
    pg = postgres(folder / "pg") if database == "postgres" else None
    if node is not None:
        node.start()
    try:
        if pg is not None:
            pg.start()
            url = pg.create_database("village_bench")
        else:
            url = f"sqlite:///{folder / 'registry.db'}"
        migrate(url)
        engine = make_engine(url)
        with Session(engine) as session:
            load_demo_trace(session)
            session.commit()
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            DATABASE_URL=url,
            CHAIN_RPC_URL=node.url if node is not None else rpc_url,
            ANCHOR_WINDOW_LEAVES=records,
            ANCHOR_WINDOW_SECONDS=3600,
        )
        chain = Chain.connect(settings, private_key=ANVIL_DEV_KEY)
        figures["contract"] = chain.ensure_contract(None)
        worker = Anchorer(engine, settings, chain=chain)
        first = worker.run_once(force_window=True)  # the demo county: the contract's first window
        with Session(engine) as session:
            w1 = session.exec(select(AnchorWindow).where(AnchorWindow.window_id == first.windows[0])).one()
            figures["first_window_gas"] = w1.gas_used
        figures["setup_records_s"] = round(_in_child(url, records, seed), 1)

        gc.collect()
        start, cpu_start = time.perf_counter(), time.process_time()
        report = worker.run_once()
        passed = time.perf_counter()
        with Session(engine) as session:
            window = session.exec(select(AnchorWindow).where(AnchorWindow.window_id.in_(report.windows))).one()  # type: ignore[attr-defined]
            assert window.leaf_count == records and window.gas_used, (window.leaf_count, window.state)
            inspections = session.exec(
                select(LedgerLeaf.record_id).where(LedgerLeaf.kind == INSPECTION, LedgerLeaf.window_seq == window.seq)
            ).all()
            ref = RecordRef(INSPECTION, random.Random(seed).choice(inspections))
            checked = time.perf_counter()
            check = check_record(session, ref, chain, None, settings)
            done, cpu_done = time.perf_counter(), time.process_time()
            assert check.status == VERIFIED, check
            figures["verified_record"] = {"kind": ref.kind, "id": ref.id, "status": check.status}
        t = report.timings
        figures.update(
            {
                "records_s": round(t.get("records", 0), 2),
                "canonical_s": round(t.get("canonical", 0), 2),
                "leaves_s": round(t.get("leaves", 0), 2),
                "manifests_s": round(t.get("manifests", 0), 2),
                "plan_manifests_s": round(t.get("plan_manifests", 0), 2),
                "tree_s": round(t.get("tree", 0), 2),
                "proofs_s": round(t.get("proofs", 0), 2),
                "store_s": round(sum(t.get(k, 0) for k in STORE_STEPS), 2),
                "anchor_s": round(t.get("send", 0) + t.get("track", 0), 2),
                "verify_record_ms": round((done - checked) * 1e3, 1),
                "end_to_end_s": round(done - start, 2),
                "end_to_end_cpu_s": round(cpu_done - cpu_start, 2),
                "children_cpu_s": report.children_cpu_s,
                "wait_children_s": round(t.get("wait_children", 0), 2),
                "start_children_s": round(t.get("start_children", 0), 2),
                "worker_pass_s": round(passed - start, 2),
                "peak_rss_mb": _rss_mb(resource.RUSAGE_SELF),
                "peak_rss_leaf_children_mb": report.children_peak_rss_mb,
                "peak_rss_total_mb": round(
                    _rss_mb(resource.RUSAGE_SELF) + report.children * report.children_peak_rss_mb, 1
                ),
                "peak_rss_children_mb": _rss_mb(resource.RUSAGE_CHILDREN),
                "anvil_peak_rss_mb": _process_hwm_mb(node.proc.pid if node and node.proc else None),
                "store_detail_s": {k: round(t.get(k, 0), 2) for k in STORE_STEPS},
            }
        )
        cores = min(os.cpu_count() or 1, report.children + 1) if report.children else 1
        figures.update(_proof_checks(engine, chain, window, verify_samples, seed))
        figures["gas_1"] = int(statistics.median(_anchor_more(engine, settings, chain, 17, 1, seed + 1)))
        figures["gas_1000"] = _anchor_more(engine, settings, chain, 1000, 1000, seed + 2)[0]
        figures[f"gas_{records}"] = window.gas_used
        stored = _database_bytes(engine, folder)
        if stored:
            figures["stored_bytes_per_record"] = {k: round(v / (records + 1017 + 71), 1) for k, v in stored.items()}
        engine.dispose()
    finally:
        if node is not None:
            node.stop()
        if pg is not None:
            pg.stop()
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    figures["cores"] = cores
    figures["machine_cores"] = os.cpu_count()
    figures["load_after"] = _load()
    figures["note"] = (
        "end_to_end_s: one pass of the anchoring worker over real trace rows (built, canonicalised, hashed, "
        "manifests, tree, every proof stored, committed, anchored on anvil) and one record verified from the "
        "database through the chain; the rows themselves were made before (setup_records_s). The worker "
        + (
            f"stores while {report.children} child processes build and hash the trace records (records_s, canonical_s, "
            "leaves_s: their seconds summed)"
            if cores > 1
            else "builds, hashes and stores in one process"
        )
        + ", sharing the machine with anvil"
        + (" and PostgreSQL" if database == "postgres" else "")
        + "; verify_us is the proof check alone, on proofs read from the database"
    )
    return figures


def _proof_checks(engine: Any, chain: Chain, window: AnchorWindow, samples: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with Session(engine) as session:
        leaf = LedgerLeaf.__table__.c  # type: ignore[attr-defined]
        first, last = session.execute(
            sa.select(sa.func.min(leaf.id), sa.func.max(leaf.id)).where(leaf.window_seq == window.seq)
        ).one()
        picks = sorted({rng.randint(first, last) for _ in range(samples)})
        rows = session.execute(sa.select(leaf.id, leaf.leaf, leaf.tree_index).where(leaf.id.in_(picks))).all()
        root = unhex(window.root)
        reads, checks, proofs = [], [], []
        for r in rows:
            t0 = time.perf_counter()
            proof = read_proof(session, window.seq, r.tree_index)
            t1 = time.perf_counter()
            ok = verify(root, unhex(r.leaf), proof)
            t2 = time.perf_counter()
            assert ok
            reads.append(t1 - t0)
            checks.append(t2 - t1)
            proofs.append((proof, unhex(r.leaf)))
        pages = session.exec(
            select(sa.func.count()).select_from(LedgerTreePage).where(LedgerTreePage.window_seq == window.seq)
        ).one()
    onchain = []
    for proof, value in proofs[:50]:
        t0 = time.perf_counter()
        assert chain.verify_on_chain(proof, root, value)
        onchain.append(time.perf_counter() - t0)
    return {
        "verify_us_median": round(statistics.median(checks) * 1e6, 1),
        "verify_us_p99": round(_quantile(checks, 0.99) * 1e6, 1),
        "verify_samples": len(checks),
        "proof_length": len(proofs[0][0]),
        "proof_read_us_median": round(statistics.median(reads) * 1e6, 1),
        "proof_pages": int(pages),
        "onchain_verify_ms_median": round(statistics.median(onchain) * 1e3, 2),
    }
