"""Where the anchoring worker keeps every leaf's Merkle proof, and how a proof is read back.

A window's tree is stored once, node by node (`LedgerTreePage`: pages of `PAGE_NODES` 32-byte
nodes in OpenZeppelin's array order), and each leaf row keeps its `tree_index`. A proof is the
sibling of every node on the path from the leaf to the root: with node i's sibling at i + 1 (i
odd) or i - 1 (i even) and its parent at (i - 1) // 2, the path of a leaf of a million-leaf
window touches 21 nodes on 17 pages, read in one query. Storing this costs 64 bytes a leaf (the
tree has 2n - 1 nodes) against ~1.4 KB for a JSON list of 20 hex siblings per leaf, and writing
a window is one insert per 32 nodes, each leaf's place written with its row (a large pass, which
holds its rows until its windows are built) or by one small update per leaf.

SQLite's `substr` reads a whole blob before slicing it (153 ms a call on a 64 MB tree, measured),
hence small pages rather than one blob per window.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from core.db import insert_many
from core.log import get_logger
from ledger.anchor_models import PAGE_NODES, LedgerLeaf, LedgerTreePage
from ledger.merkle import HASH_BYTES, MerkleTree

__all__ = [
    "PAGE_NODES",
    "pages",
    "path_nodes",
    "proof_of",
    "proofs_of",
    "read_proof",
    "read_proofs",
    "store_pages",
    "store_tree",
]

PAGE_BYTES = PAGE_NODES * HASH_BYTES
_PAGE = LedgerTreePage.__table__  # type: ignore[attr-defined]
log = get_logger("proofs")


def path_nodes(tree_index: int) -> list[int]:
    """Indices of the proof's nodes (the siblings on the path to the root), leaf first."""
    out, i = [], tree_index
    while i > 0:
        out.append(i + 1 if i % 2 else i - 1)
        i = (i - 1) // 2
    return out


def pages(tree: MerkleTree) -> Iterable[tuple[int, bytes]]:
    """(page number, nodes) of every page of a tree."""
    blob = tree.nodes.tobytes()
    for page, start in enumerate(range(0, len(blob), PAGE_BYTES)):
        yield page, blob[start : start + PAGE_BYTES]


def store_tree(session: Session, window_seq: int, tree: MerkleTree) -> None:
    """Write every node of a window's tree."""
    store_pages(session, window_seq, pages(tree))


def store_pages(session: Session, window_seq: int, numbered: Iterable[tuple[int, bytes]]) -> None:
    insert_many(session, _PAGE, ("window_seq", "page", "nodes"), [(window_seq, p, b) for p, b in numbered])


def _read_pages(session: Session, window_seq: int, wanted: Iterable[int]) -> dict[int, bytes]:
    """Pages `wanted` of window `window_seq` (those stored), one query per `BULK_CHUNK` pages."""
    from ledger.records import chunks

    got: dict[int, bytes] = {}
    for part in chunks(sorted(set(wanted))):
        q = sa.select(_PAGE.c.page, _PAGE.c.nodes).where(_PAGE.c.window_seq == window_seq, _PAGE.c.page.in_(part))
        got.update({page: nodes for page, nodes in session.execute(q)})
    return got


def _proof_from(got: dict[int, bytes], window_seq: int, nodes: list[int]) -> list[bytes]:
    out = []
    for n in nodes:
        blob = got.get(n // PAGE_NODES)
        offset = (n % PAGE_NODES) * HASH_BYTES
        if blob is None or len(blob) < offset + HASH_BYTES:
            raise LookupError(f"node {n} of window {window_seq} is not stored")
        out.append(bytes(blob[offset : offset + HASH_BYTES]))
    return out


def read_proof(session: Session, window_seq: int, tree_index: int) -> list[bytes]:
    """The proof of the leaf at `tree_index` in window `window_seq`: siblings from the leaf up."""
    nodes = path_nodes(tree_index)
    if not nodes:
        return []
    return _proof_from(_read_pages(session, window_seq, {n // PAGE_NODES for n in nodes}), window_seq, nodes)


def read_proofs(session: Session, window_seq: int, tree_indices: Iterable[int]) -> dict[int, list[bytes] | None]:
    """`read_proof` of many leaves of one window, their pages read in one query (a lot's records
    share the upper pages of their paths): tree index -> proof, None where nodes are missing."""
    paths = {i: path_nodes(i) for i in set(tree_indices)}
    got = _read_pages(session, window_seq, {n // PAGE_NODES for nodes in paths.values() for n in nodes})
    out: dict[int, list[bytes] | None] = {}
    for i, nodes in paths.items():
        try:
            out[i] = _proof_from(got, window_seq, nodes)
        except LookupError:
            out[i] = None
    return out


def proof_of(session: Session, row: LedgerLeaf) -> list[str]:
    """A leaf row's proof as 0x-hex siblings (the proof bundle's `proof`); [] before its window, and
    when nodes are missing from the database (the proof then fails, as an altered one would)."""
    if row.window_seq is None or row.tree_index is None:
        return []
    try:
        return ["0x" + p.hex() for p in read_proof(session, row.window_seq, row.tree_index)]
    except LookupError as e:
        log.warning("proof nodes missing", leaf=row.id, error=str(e))
        return []


def proofs_of(session: Session, rows: Sequence[Any]) -> list[list[bytes]]:
    """`proof_of` of many leaf rows (LedgerLeaf, or rows with its `id`, `window_seq` and `tree_index`),
    as bytes, in one query per window: [] before a row's window and where nodes are missing."""
    by_window: dict[int, set[int]] = defaultdict(set)
    for row in rows:
        if row.window_seq is not None and row.tree_index is not None:
            by_window[row.window_seq].add(row.tree_index)
    read = {seq: read_proofs(session, seq, indices) for seq, indices in by_window.items()}
    out: list[list[bytes]] = []
    for row in rows:
        if row.window_seq is None or row.tree_index is None:
            out.append([])
            continue
        proof = read[row.window_seq][row.tree_index]
        if proof is None:
            log.warning("proof nodes missing", leaf=row.id, error=f"a node of window {row.window_seq} is not stored")
        out.append(proof or [])
    return out
