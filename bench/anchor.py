"""`village bench anchor`: Merkle tree and proof speed, and the gas of anchoring a window.

Figures:

- tree_s: `MerkleTree.build` over N leaves (sorting, N-1 node hashes), single-threaded;
- proofs_s: every leaf's proof as a matrix of node indices (`proof_matrix`); bytes are made
  from it lazily, per proof: `proof_bytes_us` is that cost per proof (on up to 100,000);
- tree_and_proofs_s: the two together (target: under 10 s for 1,000,000 leaves);
- verify_us_median/p99: one proof checked in Python (`ledger.merkle.verify`; target: under 1 ms),
  and `onchain_verify_ms_median`: the contract's `verify` through eth_call on anvil;
- gas per anchoring transaction for windows of 1, 1,000 and N leaves (after a first window, which
  writes zero storage slots and costs more: `first_window_gas`). It must not grow with the window.

Leaves are random 32-byte values, distributed as leaf hashes are. Starts its own anvil.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.services import ANVIL_DEV_KEY, anvil
from core.settings import Settings
from ledger.chain import Chain
from ledger.merkle import MerkleTree, verify

ZERO = b"\0" * 32


def _random_leaves(n: int) -> np.ndarray:
    return np.frombuffer(os.urandom(32 * n), dtype=np.uint8).reshape(n, 32)


def measure_tree(leaves: int, verify_samples: int = 2000) -> tuple[dict[str, Any], MerkleTree]:
    values = _random_leaves(leaves)
    t0 = time.perf_counter()
    tree = MerkleTree.build(values)
    t1 = time.perf_counter()
    matrix = tree.proof_matrix()
    t2 = time.perf_counter()
    sample = min(leaves, 100_000)
    proofs = tree.proofs(matrix[:sample])
    t3 = time.perf_counter()
    for _ in range(sample):
        next(proofs)
    t4 = time.perf_counter()
    rng = np.random.default_rng()
    timings = []
    for i in rng.integers(0, leaves, size=verify_samples).tolist():
        leaf, proof = tree.leaf(i), tree.proof(i)
        start = time.perf_counter()
        ok = verify(tree.root, leaf, proof)
        timings.append(time.perf_counter() - start)
        assert ok
    timings.sort()
    return {
        "leaves": leaves,
        "tree_s": round(t1 - t0, 3),
        "proofs_s": round(t2 - t1, 3),
        "tree_and_proofs_s": round(t2 - t0, 3),
        "proof_bytes_us": round((t4 - t3) / sample * 1e6, 2),
        "proof_length": int((matrix[0] >= 0).sum()),
        "verify_us_median": round(statistics.median(timings) * 1e6, 1),
        "verify_us_p99": round(timings[int(0.99 * (len(timings) - 1))] * 1e6, 1),
    }, tree


def measure_gas(chain: Chain, big: MerkleTree, onchain_samples: int = 50) -> dict[str, Any]:
    def anchor(root: bytes, prev: bytes, count: int, window: str) -> int:
        tx = chain.send_anchor(root, prev, count, window)
        chain.wait_mined(tx)
        receipt = chain.receipt(tx)
        assert receipt is not None and receipt.ok
        return receipt.gas_used

    first = MerkleTree.build(_random_leaves(1))
    gas: dict[str, Any] = {"first_window_gas": anchor(first.root, ZERO, 1, "bench-000")}
    prev = first.root
    windows = [MerkleTree.build(_random_leaves(1)), MerkleTree.build(_random_leaves(1000)), big]
    for k, tree in enumerate(windows, start=1):
        gas[f"gas_{len(tree)}"] = anchor(tree.root, prev, len(tree), f"bench-{k:03d}")  # same-length window ids
        prev = tree.root
    timings = []
    for i in np.random.default_rng().integers(0, len(big), size=onchain_samples).tolist():
        proof, leaf = big.proof(i), big.leaf(i)
        start = time.perf_counter()
        assert chain.verify_on_chain(proof, big.root, leaf)
        timings.append(time.perf_counter() - start)
    gas["onchain_verify_ms_median"] = round(statistics.median(timings) * 1e3, 2)
    return gas


def run(leaves: int = 1_000_000, verify_samples: int = 2000, keep: Path | None = None) -> dict[str, Any]:
    figures, tree = measure_tree(leaves, verify_samples)
    with tempfile.TemporaryDirectory(prefix="village-bench-anchor-") as tmp:
        node = anvil((keep or Path(tmp)) / "anvil")
        node.start()
        try:
            settings = Settings(_env_file=None, CHAIN_RPC_URL=node.url)  # type: ignore[call-arg]
            chain = Chain.connect(settings, private_key=ANVIL_DEV_KEY)
            chain.ensure_contract(None)
            figures.update(measure_gas(chain, tree))
        finally:
            node.stop()
    figures["cores"] = os.cpu_count()
    figures["note"] = "tree building and proofs are single-threaded (one core); leaves are random 32-byte values"
    return figures
