"""ledger.merkle against OpenZeppelin's @openzeppelin/merkle-tree (run by node) and a plain reference."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from Crypto.Hash import keccak as pycryptodome_keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import merkle
from ledger.merkle import MerkleTree, keccak256, leaf_hash, node_hash, process_proof, verify

ROOT = Path(__file__).resolve().parents[1]
OZ_SCRIPT = ROOT / "tests" / "merkle_oz.mjs"


def run_openzeppelin(trees: list[list[bytes]], dumps: list[dict] | None = None) -> dict:
    node = shutil.which("node")
    assert node, "Node.js is missing: run `make deps`"
    assert (ROOT / "node_modules" / "@openzeppelin" / "merkle-tree").is_dir(), "npm packages missing: run `make deps`"
    request = {"trees": [["0x" + leaf.hex() for leaf in leaves] for leaves in trees], "dumps": dumps or []}
    done = subprocess.run([node, str(OZ_SCRIPT)], input=json.dumps(request), capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def hexes(values: list[bytes]) -> list[str]:
    return ["0x" + v.hex() for v in values]


def reference_root(leaves: list[bytes]) -> bytes:
    """The OpenZeppelin layout written the slow, obvious way."""
    ordered = sorted(leaves)  # stable, by bytes
    tree: list[bytes] = [b""] * (2 * len(leaves) - 1)
    for i, leaf in enumerate(ordered):
        tree[len(tree) - 1 - i] = leaf
    for i in range(len(tree) - 1 - len(leaves), -1, -1):
        tree[i] = node_hash(tree[2 * i + 1], tree[2 * i + 2])
    return tree[0]


def test_keccak_and_leaf_hash_vectors() -> None:
    # keccak256("") is the well-known Ethereum constant (SHA3-256 would give a7ffc6f8...)
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert leaf_hash(b"abc") == keccak256(keccak256(b"abc"))
    a, b = os.urandom(32), os.urandom(32)
    assert node_hash(a, b) == node_hash(b, a) == keccak256(min(a, b) + max(a, b))


@pytest.mark.parametrize("length", [1, 32, 64, 135, 136, 137, 300])
def test_batch_keccak_matches_pycryptodome(length: int) -> None:
    messages = np.frombuffer(os.urandom(length * 50), dtype=np.uint8).reshape(50, length).copy()
    out = np.zeros((50, 32), dtype=np.uint8)
    assert merkle._LIB is not None, "the C binding failed its self-test here"
    hasher = merkle._CKeccak(merkle._LIB)
    hasher.hash_rows(messages, out)
    many = np.zeros((50, 32), dtype=np.uint8)
    hasher.hash_many([row.tobytes() for row in messages], many)
    hasher.close()
    for row, digest, other in zip(messages, out, many, strict=True):
        expected = pycryptodome_keccak.new(digest_bits=256, data=row.tobytes()).digest()
        assert digest.tobytes() == other.tobytes() == expected


def test_same_trees_roots_proofs_and_dumps_as_openzeppelin() -> None:
    rng = random.Random(7)
    cases = [[rng.randbytes(32) for _ in range(n)] for n in (1, 2, 3, 4, 5, 7, 8, 33, 1000)]
    dup = [rng.randbytes(32) for _ in range(6)]
    cases.append([*dup, dup[1], dup[4], dup[1]])  # duplicates are kept, as OpenZeppelin does
    cases.append([b"\0" * 31 + bytes([i]) for i in range(9)] + [b"\xff" * 32, b"\0" * 32])  # byte-order edges
    trees = [MerkleTree.build(leaves) for leaves in cases]
    oz = run_openzeppelin(cases, dumps=[t.dump() for t in trees])
    for leaves, tree, ref, loaded in zip(cases, trees, oz["trees"], oz["loaded"], strict=True):
        assert ref["verified"]
        assert ref["root"] == "0x" + tree.root.hex()
        assert ref["dump"] == tree.dump()
        assert loaded == ref["root"]  # OpenZeppelin loads (and validates) our dump
        assert MerkleTree.load(ref["dump"]).root == tree.root  # and we load theirs
        assert ref["proofs"] == [hexes(tree.proof(i)) for i in range(len(leaves))]
        assert ref["byValue"] == [hexes(tree.proof(leaf)) for leaf in leaves]
        assert list(tree.proofs()) == [tree.proof(i) for i in range(len(leaves))]
        assert all(verify(tree.root, leaf, tree.proof(i)) for i, leaf in enumerate(leaves))


def test_one_leaf_zero_leaves_and_bad_input() -> None:
    leaf = os.urandom(32)
    tree = MerkleTree.build([leaf])
    assert tree.root == leaf and tree.proof(0) == [] and verify(leaf, leaf, [])
    assert tree.proof_matrix().shape == (1, 0)
    with pytest.raises(ValueError, match="non-zero"):
        MerkleTree.build([])
    with pytest.raises(ValueError, match="32 bytes"):
        MerkleTree.build([leaf, b"short"])
    with pytest.raises(ValueError, match="not in tree"):
        tree.proof(os.urandom(32))
    with pytest.raises(IndexError):
        tree.proof(1)
    with pytest.raises(ValueError, match="32 bytes"):
        verify(leaf, leaf, [b"x"])


def test_tampering_is_detected() -> None:
    leaves = [leaf_hash(f"record {i}".encode()) for i in range(100)]
    tree = MerkleTree.build(leaves)
    proof = tree.proof(42)
    assert verify(tree.root, leaves[42], proof)
    assert not verify(tree.root, leaf_hash(b"record 43"), proof)  # another leaf, same path
    assert not verify(tree.root, leaf_hash(b"record 42!"), proof)  # altered record
    bad = list(proof)
    bad[3] = bytes([bad[3][0] ^ 1]) + bad[3][1:]
    assert not verify(tree.root, leaves[42], bad)
    assert not verify(tree.root, leaves[42], proof[:-1])
    # An inner node is its 64 children bytes hashed once; passed off as a record, those bytes are
    # hashed twice, so they never verify on the inner node's path.
    inner = 5
    children = b"".join(sorted([tree.node(2 * inner + 1), tree.node(2 * inner + 2)]))
    path = tree._path(inner)
    assert verify(tree.root, tree.node(inner), path)
    assert not verify(tree.root, leaf_hash(children), path)
    assert process_proof(tree.node(inner), path) == tree.root


def test_load_rejects_a_tampered_dump() -> None:
    tree = MerkleTree.build([os.urandom(32) for _ in range(10)])
    dump = tree.dump()
    dump["tree"][3] = "0x" + os.urandom(32).hex()
    with pytest.raises(ValueError, match=r"invalid|expected value"):
        MerkleTree.load(dump)
    with pytest.raises(ValueError, match="Unknown format"):
        MerkleTree.load({**tree.dump(), "format": "standard-v1"})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_matches_the_reference_and_every_proof_verifies(leaves: list[bytes], rnd: random.Random) -> None:
    leaves = leaves + [rnd.choice(leaves) for _ in range(rnd.randrange(3))]  # some duplicates
    tree = MerkleTree.build(leaves)
    assert tree.root == reference_root(leaves)
    matrix = tree.proof_matrix()
    for i, leaf in enumerate(leaves):
        assert tree.leaf(i) == leaf
        proof = tree.proof(i)
        assert [tree.node(j) for j in matrix[i] if j >= 0] == proof
        assert verify(tree.root, leaf, proof)


def test_numpy_input_equals_bytes_input() -> None:
    leaves = [os.urandom(32) for _ in range(257)]
    as_array = np.frombuffer(b"".join(leaves), dtype=np.uint8).reshape(-1, 32)
    assert MerkleTree.build(as_array).root == MerkleTree.build(leaves).root


# ---------------------------------------------------------------- the C binding's check and its fallback


class _WrongKeccak(merkle._PublicKeccak):
    """A reference that disagrees on one input: what a changed private C function would look like."""

    def hash(self, data: bytes) -> bytes:
        digest = super().hash(data)
        return digest if len(data) != 136 else bytes(32)


def test_binding_without_the_symbols_falls_back_with_a_warning() -> None:
    libc = subprocess.run(["ldd", "/bin/sh"], capture_output=True, text=True).stdout
    path = next((w for w in libc.split() if "libc.so" in w and w.startswith("/")), None)
    assert path, libc
    with pytest.warns(RuntimeWarning, match="cannot be bound"):
        assert merkle._bind(path) is None  # a real library without keccak_init
    with pytest.warns(RuntimeWarning, match="cannot be bound"):
        assert merkle._bind("/nonexistent/_keccak.so") is None


def test_binding_that_disagrees_with_the_public_api_falls_back_with_a_warning() -> None:
    with pytest.warns(RuntimeWarning, match="disagrees"):
        assert merkle._bind(reference=_WrongKeccak()) is None
    assert merkle._bind() is not None  # the installed pycryptodome passes its self-test


@pytest.mark.parametrize("length", [0, 1, 32, 64, 136, 137, 500])
def test_public_fallback_hashes_as_the_c_binding(length: int) -> None:
    assert merkle._LIB is not None
    fast, public = merkle._CKeccak(merkle._LIB), merkle._PublicKeccak()
    try:
        rows = np.frombuffer(os.urandom(length * 40 or 1), dtype=np.uint8)[: length * 40].reshape(40, length).copy()
        for h in (fast, public):
            out_rows, out_many = np.zeros((40, 32), dtype=np.uint8), np.zeros((40, 32), dtype=np.uint8)
            h.hash_rows(rows, out_rows)
            h.hash_many([r.tobytes() for r in rows], out_many)
            assert np.array_equal(out_rows, out_many)
            assert out_rows[0].tobytes() == fast.hash(rows[0].tobytes()) == public.hash(rows[0].tobytes())
    finally:
        fast.close()


def test_trees_leaves_and_proofs_are_the_same_on_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    records = [os.urandom(random.randrange(1, 400)) for _ in range(301)]
    fast_leaves = merkle.leaf_hashes(records)
    fast = MerkleTree.build(fast_leaves)
    monkeypatch.setattr(merkle, "_LIB", None)
    assert merkle._hasher() is merkle._PUBLIC
    slow_leaves = merkle.leaf_hashes(records)
    assert np.array_equal(fast_leaves, slow_leaves)
    assert slow_leaves[7].tobytes() == leaf_hash(records[7]) == keccak256(keccak256(records[7]))
    slow = MerkleTree.build(slow_leaves)
    assert np.array_equal(slow.nodes, fast.nodes) and slow.root == reference_root(list(map(bytes, slow_leaves)))
    assert verify(slow.root, slow.leaf(5), slow.proof(5))
    assert not verify(slow.root, slow.leaf(5), slow.proof(6))


def test_import_falls_back_when_the_c_library_cannot_be_loaded() -> None:
    """At import: ctypes cannot load the library -> a RuntimeWarning, the public API, the same root."""
    script = (
        "import ctypes, warnings\n"
        "import numpy, Crypto.Hash.keccak  # loaded first: pycryptodome's own loader uses ctypes too\n"
        "def broken(*a, **k):\n    raise OSError('no such library')\n"
        "ctypes.CDLL = broken\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from ledger import merkle\n"
        "assert merkle._LIB is None and merkle._hasher() is merkle._PUBLIC\n"
        "assert any('falling back' in str(w.message) for w in caught), caught\n"
        "print(merkle.MerkleTree.build([merkle.leaf_hash(bytes([i])) for i in range(9)]).root.hex())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([os.sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    expected = MerkleTree.build([leaf_hash(bytes([i])) for i in range(9)]).root.hex()
    assert done.stdout.strip() == expected
