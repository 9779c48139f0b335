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
