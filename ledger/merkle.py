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

Speed: a tree of a million leaves has a million inner nodes to hash, and a million records have
two million leaf hashes. Hashing each with a new pycryptodome hash object costs ~12 µs; driving
pycryptodome's C keccak directly through ctypes (`_CKeccak`: one reusable state per thread, three
C calls per hash) costs ~3 µs. Those are private symbols of pycryptodome (a declared dependency),
so at import the binding is checked against the public `Crypto.Hash.keccak.new` on test vectors
of every length class; if a symbol is missing or a digest differs, a RuntimeWarning says so and
everything falls back to `keccak.new` (`_PublicKeccak`): same results, about four times slower.
Proofs for every leaf come as one numpy matrix of node indices (`proof_matrix`), turned into bytes
only when a proof is asked for. Single-threaded.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from Crypto.Hash import keccak as _keccak

HASH_BYTES = 32
DUMP_FORMAT = "simple-v1"
_KECCAK_PADDING = 0x01  # Keccak padding (SHA-3 would be 0x06)


def keccak256(data: bytes) -> bytes:
    return _keccak.new(digest_bits=256, data=data).digest()


def leaf_hash(canonical: bytes) -> bytes:
    """The leaf of a record: keccak256(keccak256(canonical bytes))."""
    h = _hasher()
    return h.hash(h.hash(canonical))


def leaf_hashes(canonicals: Sequence[bytes]) -> np.ndarray:
    """`leaf_hash` of many records at once, as a (n, 32) uint8 array in input order."""
    first = np.empty((len(canonicals), HASH_BYTES), dtype=np.uint8)
    out = np.empty_like(first)
    h = _hasher()
    h.hash_many(canonicals, first)
    h.hash_rows(first, out)
    return out


def node_hash(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin's commutative node hash: keccak256 of the sorted pair."""
    return _hasher().hash(a + b if a <= b else b + a)


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` leads to from `leaf` (MerkleProof.processProof)."""
    computed = _check_node(leaf)
    hash_ = _hasher().hash
    for sibling in proof:
        s = sibling if type(sibling) is bytes and len(sibling) == HASH_BYTES else _check_node(sibling)
        computed = hash_(computed + s if computed <= s else s + computed)
    return computed


def verify(root: bytes, leaf: bytes, proof: Sequence[bytes]) -> bool:
    """Whether `proof` proves `leaf` under `root` (MerkleProof.verify)."""
    return process_proof(leaf, proof) == _check_node(root)


def _check_node(node: bytes) -> bytes:
    if not isinstance(node, bytes | bytearray) or len(node) != HASH_BYTES:
        raise ValueError(f"Merkle tree nodes must be {HASH_BYTES} bytes, got {node!r:.80}")
    return bytes(node)


# ---------------------------------------------------------------- keccak256, fast and public


class _Hasher(Protocol):
    def hash(self, data: bytes) -> bytes: ...

    def hash_many(self, messages: Sequence[bytes], out: np.ndarray) -> None: ...

    def hash_rows(self, messages: np.ndarray, out: np.ndarray) -> None: ...


class _PublicKeccak:
    """keccak256 through pycryptodome's public API (`Crypto.Hash.keccak.new`): the fallback."""

    def hash(self, data: bytes) -> bytes:
        return _keccak.new(digest_bits=256, data=data).digest()

    def hash_many(self, messages: Sequence[bytes], out: np.ndarray) -> None:
        """out[k] = keccak256(messages[k]) into a C-contiguous (n, 32) uint8 array."""
        new = _keccak.new
        out[:] = np.frombuffer(
            b"".join(new(digest_bits=256, data=m).digest() for m in messages), dtype=np.uint8
        ).reshape(len(messages), HASH_BYTES)

    def hash_rows(self, messages: np.ndarray, out: np.ndarray) -> None:
        """out[k] = keccak256(messages[k]) for C-contiguous uint8 arrays (m, L) and (m, 32)."""
        self.hash_many([row.tobytes() for row in messages], out)


class _KeccakLib:
    """pycryptodome's C keccak (`Crypto.Hash._keccak`: keccak_init, keccak_absorb, keccak_digest,
    keccak_reset), bound through ctypes. Raises ImportError, OSError or AttributeError when the
    library or one of its symbols is missing."""

    def __init__(self, path: str | None = None) -> None:
        if path is None:
            spec = importlib.util.find_spec("Crypto.Hash._keccak")
            if spec is None or not spec.origin:
                raise ImportError("pycryptodome's Crypto.Hash._keccak library not found")
            path = spec.origin
        lib = ctypes.CDLL(path)
        vp, sz, ub = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_ubyte
        self.init = lib["keccak_init"]
        self.init.argtypes = [ctypes.POINTER(vp), sz, ub]
        self.absorb = lib["keccak_absorb"]  # from an address
        self.absorb.argtypes = [vp, vp, sz]
        self.absorb_bytes = lib["keccak_absorb"]  # from a bytes object, without copying it
        self.absorb_bytes.argtypes = [vp, ctypes.c_char_p, sz]
        self.digest = lib["keccak_digest"]
        self.digest.argtypes = [vp, vp, sz, ub]
        self.reset = lib["keccak_reset"]
        self.reset.argtypes = [vp]
        self.destroy = lib["keccak_destroy"]
        self.destroy.argtypes = [vp]


class _CKeccak:
    """keccak256 through `_KeccakLib` with one state (not shared between threads: see `_hasher`)."""

    def __init__(self, lib: _KeccakLib) -> None:
        self.lib = lib
        state = ctypes.c_void_p()
        # capacity 64 bytes = keccak256 (rate 136), 24 rounds
        if lib.init(ctypes.byref(state), 64, 24) != 0:
            raise RuntimeError("keccak_init failed")
        self.state = state
        self._buf = ctypes.create_string_buffer(HASH_BYTES)
        self._buf_addr = ctypes.addressof(self._buf)

    def close(self) -> None:
        self.lib.destroy(self.state)

    def hash(self, data: bytes) -> bytes:
        lib, state = self.lib, self.state.value
        lib.absorb_bytes(state, data, len(data))
        lib.digest(state, self._buf_addr, HASH_BYTES, _KECCAK_PADDING)
        lib.reset(state)
        return self._buf.raw

    def hash_many(self, messages: Sequence[bytes], out: np.ndarray) -> None:
        """out[k] = keccak256(messages[k]) into a C-contiguous (n, 32) uint8 array."""
        assert out.flags.c_contiguous and out.shape == (len(messages), HASH_BYTES) and out.dtype == np.uint8
        absorb, digest, reset = self.lib.absorb_bytes, self.lib.digest, self.lib.reset
        state, dst = self.state.value, out.ctypes.data
        for d, m in zip(range(dst, dst + HASH_BYTES * len(messages), HASH_BYTES), messages, strict=True):
            absorb(state, m, len(m))
            digest(state, d, HASH_BYTES, _KECCAK_PADDING)
            reset(state)

    def hash_rows(self, messages: np.ndarray, out: np.ndarray) -> None:
        """out[k] = keccak256(messages[k]) for C-contiguous uint8 arrays (m, L) and (m, 32)."""
        m, length = messages.shape
        assert messages.flags.c_contiguous and out.flags.c_contiguous and out.shape == (m, HASH_BYTES)
        if length == 0:  # empty messages: no stride to walk
            self.hash_many([b""] * m, out)
            return
        absorb, digest, reset = self.lib.absorb, self.lib.digest, self.lib.reset
        state = self.state.value
        src, dst = messages.ctypes.data, out.ctypes.data
        pairs = zip(range(src, src + length * m, length), range(dst, dst + HASH_BYTES * m, HASH_BYTES), strict=True)
        for a, d in pairs:
            absorb(state, a, length)
            digest(state, d, HASH_BYTES, _KECCAK_PADDING)
            reset(state)


# lengths around keccak256's 136-byte block, so padding and multi-block absorbing are both checked
_SELF_TEST = [bytes(range(256))[:n] for n in (0, 1, 31, 32, 63, 64, 65, 135, 136, 137, 200, 256)] + [b"\xff" * 1000]


def _bind(path: str | None = None, reference: _Hasher | None = None) -> _KeccakLib | None:
    """The C binding if its symbols are there and it hashes `_SELF_TEST` exactly as `reference`
    (the public API) does; else None, with a RuntimeWarning saying why."""
    reference = reference or _PublicKeccak()
    try:
        lib = _KeccakLib(path)
        hasher = _CKeccak(lib)
    except (ImportError, OSError, AttributeError, RuntimeError) as e:
        warnings.warn(
            f"ledger.merkle: pycryptodome's C keccak cannot be bound ({e}); falling back to Crypto.Hash.keccak.new",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    try:
        rows = np.frombuffer(bytes(range(128)), dtype=np.uint8).reshape(2, 64)  # two inner-node inputs
        got_rows = np.empty((2, HASH_BYTES), dtype=np.uint8)
        hasher.hash_rows(rows, got_rows)
        many = np.empty((len(_SELF_TEST), HASH_BYTES), dtype=np.uint8)
        hasher.hash_many(_SELF_TEST, many)
        agree = all(hasher.hash(m) == reference.hash(m) == many[k].tobytes() for k, m in enumerate(_SELF_TEST))
        agree = agree and [r.tobytes() for r in got_rows] == [reference.hash(bytes(r)) for r in rows]
    finally:
        hasher.close()
    if not agree:
        warnings.warn(
            "ledger.merkle: pycryptodome's C keccak disagrees with Crypto.Hash.keccak.new on its self-test; "
            "falling back to Crypto.Hash.keccak.new",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return lib


_LIB: _KeccakLib | None = _bind()
_PUBLIC = _PublicKeccak()
_local = threading.local()


def _hasher() -> _Hasher:
    """This thread's hasher: the checked C binding, or the public API when it is unavailable.
    One C state per thread, kept for the thread's lifetime (a few hundred bytes)."""
    if _LIB is None:
        return _PUBLIC
    h = getattr(_local, "hasher", None)
    if h is None or h.lib is not _LIB:
        h = _local.hasher = _CKeccak(_LIB)
    return h


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
            hasher = _hasher()
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
