"""Tables of the anchoring side of the ledger: leaves, windows, and the derived records it hashes.

- `LedgerLeaf`: one leaf per trace record (records are append-only: a correction is a new
  event, a changed lot gets a new manifest), with the canonical bytes it was computed
  from (the proof bundle carries them, and a verifier names what changed by diffing against them),
  and, once its window is built, the window and where the leaf sits in the window's tree.
- `AnchorWindow`: a batch of leaves whose Merkle root goes on chain in one transaction, chained
  to the previous window's root, with the state of that transaction (`AnchorState`).
- `LedgerTreePage`: a window's Merkle tree, every node, in pages of `PAGE_NODES` nodes; a leaf's
  proof is the siblings on its path, read from a few pages (ledger/proofs.py).
- `GrowthSummary`, `TelemetryDigest`, `LateDigest`, `LotManifest`: records computed by the ledger
  itself (from InfluxDB and from the other records), stored with their content and salt so that
  they can be hashed again and compared with a fresh computation.
- `TelemetrySeal`: per village, the last local day whose readings are frozen (ledger/late.py);
  ingest reads it (by SQL, ingest/late.py) to keep later readings of those days apart.

Migration 0003 creates the first ones, 0007 `TelemetrySeal` and `LateDigest`, 0010 `LedgerTreePage`
(it replaced a JSON list of hex siblings per leaf: ~1.4 KB a leaf against 64 bytes).
"""

# No `from __future__ import annotations`: SQLModel reads the annotations at class creation.

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

from core.models import utcnow
from ledger.models import new_salt


class AnchorState(StrEnum):
    """The same words in the API, the CLI and the pages (DESIGN "Ledger")."""

    pending = "pending"  # not yet in a block (built, or sent and waiting)
    included = "included"  # in a block
    confirmed = "confirmed"  # CHAIN_CONFIRMATIONS blocks deep
    final = "final"  # at or below the chain's finalized block
    requeued = "re-queued"  # its transaction was dropped by a reorganisation; waits to be sent again


ON_CHAIN = (AnchorState.included, AnchorState.confirmed, AnchorState.final)


class AnchorWindow(SQLModel, table=True):
    __tablename__ = "anchor_window"

    seq: int = Field(primary_key=True)  # 1, 2, 3...: the order windows go on chain
    window_id: str = Field(unique=True, index=True)  # e.g. "211122-w000001"
    root: str = Field(unique=True, index=True)  # 0x + 64 hex
    prev_root: str  # the previous window's root, 0x00..00 for the first
    leaf_count: int
    state: AnchorState = Field(default=AnchorState.pending, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    tx_hash: str | None = Field(default=None, index=True)
    sent_at: datetime | None = None
    attempts: int = 0
    block_number: int | None = None
    block_hash: str | None = None
    block_time: datetime | None = None
    log_index: int | None = None
    gas_used: int | None = None
    chain_id: int | None = None
    contract: str | None = None
    last_error: str | None = None


class LedgerLeaf(SQLModel, table=True):
    __tablename__ = "ledger_leaf"
    __table_args__ = (UniqueConstraint("kind", "record_id", name="uq_ledger_leaf_record"),)

    id: int | None = Field(default=None, primary_key=True)
    # (kind, record_id) is looked up through the unique constraint; no index of their own (0010)
    kind: str  # a record kind, e.g. "inspection/1"
    record_id: int
    leaf: str = Field(index=True)  # 0x + 64 hex: keccak256(keccak256(canonical))
    canonical: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    window_seq: int | None = Field(default=None, foreign_key="anchor_window.seq", index=True)
    # index of the leaf's node in its window's tree (OpenZeppelin's `treeIndex`): its proof is read
    # from the window's `LedgerTreePage`s (ledger/proofs.py)
    tree_index: int | None = None


#: nodes per `LedgerTreePage` row: 1 KiB, stored in the row itself by SQLite (4 KiB pages) and
#: PostgreSQL (below its 2 KB TOAST threshold); a proof of a million-leaf window reads 17 of them
PAGE_NODES = 32


class LedgerTreePage(SQLModel, table=True):
    """Nodes `page * PAGE_NODES` to `page * PAGE_NODES + PAGE_NODES - 1` of a window's Merkle tree
    (the array of OpenZeppelin's `SimpleMerkleTree`: root first, node i's children 2i+1 and 2i+2),
    32 bytes each, concatenated; the last page of a window may be shorter."""

    __tablename__ = "ledger_tree_page"

    window_seq: int = Field(foreign_key="anchor_window.seq", primary_key=True)
    page: int = Field(primary_key=True)
    nodes: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class GrowthSummary(SQLModel, table=True):
    """A lot's growing season as the sensors saw it (ledger/growth.py); record kind "growth/1"."""

    __tablename__ = "growth_summary"

    id: int | None = Field(default=None, primary_key=True)
    lot_id: int = Field(foreign_key="lot.id", unique=True, index=True)
    season_start: date
    season_end: date
    content: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    computed_at: datetime = Field(default_factory=utcnow)
    salt: str = Field(default_factory=new_salt, min_length=32, max_length=32)
    # The inputs the summary was computed from, frozen with it: verification recomputes over the same
    # season and devices, so a later event (an earlier "sowing") or a device registered afterwards on
    # the plot cannot change what the anchored summary means. [[device id, kind], ...]; None: older rows.
    devices: list[list[str]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class TelemetryDigest(SQLModel, table=True):
    """A hash over one plot's (or herd's) readings of one local day (ledger/digests.py); "digest/1"."""

    __tablename__ = "telemetry_digest"
    __table_args__ = (UniqueConstraint("tag", "value", "day", name="uq_telemetry_digest_day"),)

    id: int | None = Field(default=None, primary_key=True)
    tag: str  # "plot" or "herd": the InfluxDB tag the readings are selected by
    value: str = Field(index=True)  # its plot_no or herd_no
    day: date = Field(index=True)  # in the county's time zone
    readings: int
    sha256: str  # hex digest of the day's readings in canonical order
    computed_at: datetime = Field(default_factory=utcnow)
    salt: str = Field(default_factory=new_salt, min_length=32, max_length=32)


class LotManifest(SQLModel, table=True):
    """The list of a lot's records and their leaves; a new version whenever it changes ("manifest/1")."""

    __tablename__ = "lot_manifest"
    __table_args__ = (UniqueConstraint("lot_id", "version", name="uq_lot_manifest_version"),)

    id: int | None = Field(default=None, primary_key=True)
    lot_id: int = Field(foreign_key="lot.id", index=True)
    version: int
    content: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    salt: str = Field(default_factory=new_salt, min_length=32, max_length=32)


class TelemetrySeal(SQLModel, table=True):
    """Days up to `sealed_through` of a village are sealed: ingest stores readings for them as late
    readings (InfluxDB retention policy `late`), never over the points a digest was computed from.

    Ingest reads `village`, `until_ms` and `sealed_through` (ingest/late.py); the anchoring worker
    moves the seal (ledger/late.py) and digests a sealed day only ANCHOR_SEAL_WAIT_S after
    `sealed_at`, when every ingest replica must have seen the seal.
    """

    __tablename__ = "telemetry_seal"

    village: str = Field(primary_key=True)  # village code: every reading of a plot, herd or animal carries it
    sealed_through: date  # local day (county time zone)
    # epoch ms of the end of `sealed_through`: ingest compares reading times with it
    until_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    sealed_at: datetime  # when `sealed_through` last moved
    previous: date | None = None  # `sealed_through` before that move: the late batch now closing
    late_digested: date | None = None  # the last late batch whose supplementary digests were made


class LateDigest(SQLModel, table=True):
    """A supplementary digest: one plot's (or herd's) late readings of one day that arrived in one
    batch (ledger/late.py); "late_digest/1". `supplement` numbers them per plot-day: 1, 2..."""

    __tablename__ = "late_digest"
    __table_args__ = (
        UniqueConstraint("tag", "value", "day", "supplement", name="uq_late_digest_supplement"),
        UniqueConstraint("tag", "value", "day", "batch", name="uq_late_digest_batch"),
    )

    id: int | None = Field(default=None, primary_key=True)
    tag: str  # "plot" or "herd"
    value: str = Field(index=True)
    day: date = Field(index=True)  # the readings' local day
    supplement: int  # 1 for the first supplementary digest of this plot-day, then 2, 3...
    batch: date  # the InfluxDB tag `sealed_through` of the late readings it covers
    readings: int
    sha256: str
    computed_at: datetime = Field(default_factory=utcnow)
    salt: str = Field(default_factory=new_salt, min_length=32, max_length=32)
