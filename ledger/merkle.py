"""Merkle trees and proofs compatible with OpenZeppelin (MerkleProof.sol, @openzeppelin/merkle-tree).

Formats, all exact:

- leaf: `leaf_hash(canonical) = keccak256(keccak256(canonical))` over a record's canonical bytes.
  The double hash means a 64-byte inner node can never pass as a leaf.
- node: `keccak256(min(a, b) || max(a, b))` (bytes compared lexicographically): the commutative
  hash of OpenZeppelin's MerkleProof, so a proof is a plain list of siblings, no left/right flags.
- tree: the layout of `SimpleMerkleTree.of(leaves)` with its default `sortLeaves: true`. Leaves
  are sorted (stable, by bytes), the tree is an array of 2n-1 nodes where node i has children
  2i+1 and 2i+2, the root is node 0 and the sorted leaves fill the end in reverse order
  (the smallest leaf is the last node). Same root, same proofs, same `dump()` JSON ("simple-v1").
- proof: siblings from the leaf up to (not including) the root; `verify` folds them with the
  node hash, as `MerkleProof.verify` does on chain. One leaf: the root is the leaf, the proof empty.

Duplicate leaves are kept, as OpenZeppelin does (both appear in the tree); looking a proof up by
value then gives the one of the last duplicate, like OpenZeppelin's `getProof(leaf)`.

Speed: a tree of a million leaves has a million inner nodes to hash. Hashing each with a new
pycryptodome hash object costs ~12 µs; `_BatchKeccak` drives pycryptodome's C keccak directly
(one reusable state, three C calls per node, ~3 µs), level by level over numpy buffers. Proofs
for every leaf come as one numpy matrix of node indices (`proof_matrix`), turned into bytes only
when a proof is asked for. Single-threaded.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from Crypto.Hash import keccak as _keccak

HASH_BYTES = 32
DUMP_FORMAT = "simple-v1"


def keccak256(data: bytes) -> bytes:
    return _keccak.new(digest_bits=256, data=data).digest()


def leaf_hash(canonical: bytes) -> bytes:
    """The leaf of a record: keccak256(keccak256(canonical bytes))."""
    return keccak256(keccak256(canonical))


def node_hash(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin's commutative node hash: keccak256 of the sorted pair."""
    return keccak256(a + b if a <= b else b + a)


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` leads to from `leaf` (MerkleProof.processProof)."""
    computed = _check_node(leaf)
    for sibling in proof:
        computed = node_hash(computed, _check_node(sibling))
    return computed


def verify(root: bytes, leaf: bytes, proof: Sequence[bytes]) -> bool:
    """Whether `proof` proves `leaf` under `root` (MerkleProof.verify)."""
    return process_proof(leaf, proof) == _check_node(root)


def _check_node(node: bytes) -> bytes:
    if not isinstance(node, bytes | bytearray) or len(node) != HASH_BYTES:
        raise ValueError(f"Merkle tree nodes must be {HASH_BYTES} bytes, got {node!r:.80}")
    return bytes(node)


class _BatchKeccak:
    """keccak256 of many equal-length messages through pycryptodome's C functions.

    pycryptodome's Python hash objects cost ~12 µs each, mostly object overhead; driving its C
    library (`Crypto.Hash._keccak`: keccak_absorb, keccak_digest, keccak_reset) with one state
    costs ~3 µs. One instance per call: the state is not shared between threads.
    """

    _lib: ctypes.CDLL | None = None

    @classmethod
    def _load(cls) -> ctypes.CDLL:
        if cls._lib is None:
            spec = importlib.util.find_spec("Crypto.Hash._keccak")
            if spec is None or not spec.origin:
                raise ImportError("pycryptodome's Crypto.Hash._keccak library not found")
            lib = ctypes.CDLL(spec.origin)
            vp, sz = ctypes.c_void_p, ctypes.c_size_t
            lib.keccak_init.argtypes = [ctypes.POINTER(vp), sz, ctypes.c_ubyte]
            lib.keccak_absorb.argtypes = [vp, vp, sz]
            lib.keccak_digest.argtypes = [vp, vp, sz, ctypes.c_ubyte]
            lib.keccak_reset.argtypes = [vp]
            lib.keccak_destroy.argtypes = [vp]
            cls._lib = lib
        return cls._lib

    def __init__(self) -> None:
        self.lib = self._load()
        state = ctypes.c_void_p()
        # capacity 64 bytes = keccak256 (rate 136), 24 rounds
        if self.lib.keccak_init(ctypes.byref(state), 64, 24) != 0:
            raise RuntimeError("keccak_init failed")
        self.state = state

    def __enter__(self) -> _BatchKeccak:
        return self

    def __exit__(self, *_: object) -> None:
        self.lib.keccak_destroy(self.state)

    def hash_rows(self, messages: np.ndarray, out: np.ndarray) -> None:
        """out[k] = keccak256(messages[k]) for C-contiguous uint8 arrays (m, L) and (m, 32)."""
        m, length = messages.shape
        assert messages.flags.c_contiguous and out.flags.c_contiguous and out.shape == (m, HASH_BYTES)
        absorb, digest, reset = self.lib.keccak_absorb, self.lib.keccak_digest, self.lib.keccak_reset
        state = self.state.value
        src, dst = messages.ctypes.data, out.ctypes.data
        pairs = zip(range(src, src + length * m, length), range(dst, dst + HASH_BYTES * m, HASH_BYTES), strict=True)
        for a, d in pairs:
            absorb(state, a, length)
            digest(state, d, HASH_BYTES, 0x01)  # 0x01: Keccak padding (SHA-3 would be 0x06)
            reset(state)


def _as_matrix(leaves: Sequence[bytes] | np.ndarray) -> np.ndarray:
    """Leaves as a C-contiguous (n, 32) uint8 array, checking every length."""
    if isinstance(leaves, np.ndarray):
        if leaves.dtype != np.uint8 or leaves.ndim != 2 or leaves.shape[1] != HASH_BYTES:
            raise ValueError(f"leaves must be a uint8 array (n, {HASH_BYTES}), got {leaves.dtype} {leaves.shape}")
        return np.ascontiguousarray(leaves)
    for leaf in leaves:
        if not isinstance(leaf, bytes | bytearray) or len(leaf) != HASH_BYTES:
            raise ValueError(f"Merkle tree leaves must be {HASH_BYTES} bytes, got {leaf!r:.80}")
    return np.frombuffer(b"".join(leaves), dtype=np.uint8).reshape(len(leaves), HASH_BYTES)


def _sorted_pairs(children: np.ndarray) -> np.ndarray:
    """Rows of 64 bytes (left || right) rewritten as min || max, compared as bytes."""
    left, right = children[:, :HASH_BYTES], children[:, HASH_BYTES:]
    differ = left != right
    first = differ.argmax(axis=1)
    rows = np.arange(len(children))
    swap = right[rows, first] < left[rows, first]  # equal pairs: first = 0, bytes equal, no swap
    out = children.copy()
    out[swap, :HASH_BYTES] = right[swap]
    out[swap, HASH_BYTES:] = left[swap]
    return out


class MerkleTree:
    """A tree over 32-byte leaves, node for node the one OpenZeppelin's SimpleMerkleTree builds.

    `nodes` is the (2n-1, 32) array of the tree; `tree_index[i]` is where input leaf i sits.
    """

    def __init__(self, nodes: np.ndarray, tree_index: np.ndarray) -> None:
        self.nodes = nodes
        self.tree_index = tree_index
        self._blob: bytes | None = None
        self._lookup: dict[bytes, int] | None = None

    @classmethod
    def build(cls, leaves: Sequence[bytes] | np.ndarray, sort_leaves: bool = True) -> MerkleTree:
        """Build over `leaves` (32 bytes each, in input order; at least one)."""
        values = _as_matrix(leaves)
        n = len(values)
        if n == 0:
            raise ValueError("Expected non-zero number of leaves")
        # stable sort by bytes, as OpenZeppelin's Array.sort with its byte compare
        order = np.argsort(values.view(f"S{HASH_BYTES}").ravel(), kind="stable") if sort_leaves else np.arange(n)
        nodes = np.empty((2 * n - 1, HASH_BYTES), dtype=np.uint8)
        nodes[n - 1 :] = values[order[::-1]]
        tree_index = np.empty(n, dtype=np.int64)
        tree_index[order] = 2 * n - 2 - np.arange(n)
        if n > 1:
            with _BatchKeccak() as hasher:
                # internal nodes 0..n-2 by heap level, deepest first; a level's children are contiguous
                depth = (n - 2 + 1).bit_length() - 1
                for level in range(depth, -1, -1):
                    lo, hi = (1 << level) - 1, min((1 << (level + 1)) - 2, n - 2)
                    children = nodes[2 * lo + 1 : 2 * hi + 3].reshape(hi - lo + 1, 2 * HASH_BYTES)
                    hasher.hash_rows(_sorted_pairs(children), nodes[lo : hi + 1])
        return cls(nodes, tree_index)

    def __len__(self) -> int:
        return len(self.tree_index)

    @property
    def root(self) -> bytes:
        return self.nodes[0].tobytes()

    def node(self, index: int) -> bytes:
        blob = self._node_bytes()
        return blob[index * HASH_BYTES : (index + 1) * HASH_BYTES]

    def leaf(self, index: int) -> bytes:
        """Input leaf number `index`."""
        return self.node(int(self.tree_index[index]))

    def leaves(self) -> list[bytes]:
        return [self.leaf(i) for i in range(len(self))]

    def index_of(self, leaf: bytes) -> int:
        """Input index of `leaf` (the last one if it is there twice, like OpenZeppelin)."""
        if self._lookup is None:
            self._lookup = {self.leaf(i): i for i in range(len(self))}
        try:
            return self._lookup[bytes(leaf)]
        except KeyError:
            raise ValueError("Leaf is not in tree") from None

    def proof(self, leaf: bytes | int) -> list[bytes]:
        """Siblings from the leaf to the root, for an input index or a leaf value."""
        index = leaf if isinstance(leaf, int) else self.index_of(leaf)
        if not 0 <= index < len(self):
            raise IndexError("Index out of bounds")
        return self._path(int(self.tree_index[index]))

    def _path(self, i: int) -> list[bytes]:
        blob = self._node_bytes()
        proof = []
        while i > 0:
            s = i + 1 if i % 2 else i - 1
            proof.append(blob[s * HASH_BYTES : (s + 1) * HASH_BYTES])
            i = (i - 1) // 2
        return proof

    def proof_matrix(self) -> np.ndarray:
        """Every leaf's proof as node indices: row i lists the siblings of input leaf i, bottom up,
        padded with -1 (leaves sit at two depths). `nodes[row[row >= 0]]` are the proof's bytes."""
        n = len(self)
        depth = (2 * n - 1).bit_length() - 1  # deepest leaf's level
        dtype = np.int32 if 2 * n < 2**31 else np.int64
        levels = np.empty((depth, n), dtype=dtype)  # filled level by level, contiguously
        cur = self.tree_index.astype(dtype)
        for level in range(depth):
            sibling = cur + ((cur & 1) * 2 - 1)  # odd: right sibling i + 1; even: left sibling i - 1
            np.copyto(levels[level], np.where(cur > 0, sibling, -1))
            cur = (cur - 1) >> 1  # parent; the root (0) goes to -1 and stays there
        return levels.T  # (n, depth) view

    def proofs(self, matrix: np.ndarray | None = None, chunk: int = 4096) -> Iterator[list[bytes]]:
        """Every proof as bytes, in input order, gathered from the index matrix a chunk at a time."""
        matrix = self.proof_matrix() if matrix is None else matrix
        for start in range(0, len(matrix), chunk):
            rows = np.ascontiguousarray(matrix[start : start + chunk])
            data = self.nodes[rows].tobytes()  # -1 pads pick the last node: cut off by the sizes below
            stride = rows.shape[1] * HASH_BYTES
            for r, size in enumerate((rows >= 0).sum(axis=1).tolist()):
                base = r * stride
                yield [data[k : k + HASH_BYTES] for k in range(base, base + size * HASH_BYTES, HASH_BYTES)]

    def _node_bytes(self) -> bytes:
        if self._blob is None:
            self._blob = self.nodes.tobytes()
        return self._blob

    def verify(self, leaf: bytes | int, proof: Sequence[bytes]) -> bool:
        value = self.leaf(leaf) if isinstance(leaf, int) else leaf
        return verify(self.root, value, proof)

    def dump(self) -> dict[str, Any]:
        """OpenZeppelin's JSON dump (`SimpleMerkleTree.dump()`, format "simple-v1")."""
        blob = self._node_bytes()
        tree = ["0x" + blob[k : k + HASH_BYTES].hex() for k in range(0, len(blob), HASH_BYTES)]
        return {
            "format": DUMP_FORMAT,
            "tree": tree,
            "values": [{"value": tree[int(t)], "treeIndex": int(t)} for t in self.tree_index],
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> MerkleTree:
        """A tree from `dump()` (ours or OpenZeppelin's), checked node by node."""
        if data.get("format") != DUMP_FORMAT:
            raise ValueError(f"Unknown format {data.get('format')!r}")
        if "hash" in data:
            raise ValueError("Data expects a custom node hashing function")
        tree = data["tree"]
        nodes = np.frombuffer(b"".join(bytes.fromhex(h.removeprefix("0x")) for h in tree), dtype=np.uint8)
        if len(tree) == 0 or nodes.size != len(tree) * HASH_BYTES or len(tree) % 2 == 0:
            raise ValueError("Merkle tree is invalid")
        nodes = nodes.reshape(len(tree), HASH_BYTES)
        tree_index = np.array([v["treeIndex"] for v in data["values"]], dtype=np.int64)
        loaded = cls(nodes, tree_index)
        n = len(tree_index)
        if len(tree) != 2 * n - 1:
            raise ValueError("Merkle tree is invalid")
        for i, value in enumerate(data["values"]):
            if not n - 1 <= tree_index[i] < 2 * n - 1 or loaded.leaf(i) != bytes.fromhex(value["value"][2:]):
                raise ValueError("Merkle tree does not contain the expected value")
        if sorted(tree_index.tolist()) != list(range(n - 1, 2 * n - 1)):
            raise ValueError("Merkle tree is invalid")
        rebuilt = cls.build(nodes[n - 1 :][::-1], sort_leaves=False)
        if not np.array_equal(rebuilt.nodes, nodes):
            raise ValueError("Merkle tree is invalid")
        return loaded
