"""TraceAnchor on a real anvil through ledger.chain: chain-of-windows rules, on-chain proofs, gas,
reorganisations, finality, a node that goes away and comes back, and the anchoring key kept secret."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.services import ANVIL_DEV_KEY, Anvil
from ledger.chain import AnchorRejected, Chain, ChainError, ChainUnavailable, ContractMismatch, ContractReverted
from ledger.merkle import MerkleTree, leaf_hash
from tests.chain_fixtures import OTHER_DEV_KEY, chain_settings

ZERO = b"\0" * 32


def anchor(chain: Chain, root: bytes, prev: bytes, count: int = 1, window: str = "2026-01-01T00") -> int:
    """Anchor and return the gas used (asserting it landed)."""
    tx = chain.send_anchor(root, prev, count, window)
    chain.wait_mined(tx)
    receipt = chain.receipt(tx)
    assert receipt is not None and receipt.ok and receipt.root == root and receipt.prev_root == prev
    return receipt.gas_used


def test_windows_form_a_chain(chain: Chain) -> None:
    r1, r2 = os.urandom(32), os.urandom(32)
    assert chain.last_root() == ZERO and chain.window_count() == 0
    with pytest.raises(AnchorRejected) as refused:
        chain.send_anchor(r1, os.urandom(32), 3, "w1")  # the first window's prevRoot is zero
    assert refused.value.error == "WrongPrevRoot" and refused.value.error_args[0] == ZERO
    anchor(chain, r1, ZERO, 3, "w1")
    record = chain.anchor_of(r1)
    assert record is not None and (record.leaf_count, record.prev_root) == (3, ZERO)
    assert record.block_number == chain.head() and record.timestamp > 1_600_000_000

    with pytest.raises(AnchorRejected, match="WrongPrevRoot"):
        chain.send_anchor(r2, ZERO, 1, "w2")  # skipping r1: a dropped window would show
    with pytest.raises(AnchorRejected, match="AlreadyAnchored"):
        chain.send_anchor(r1, r1, 1, "w2")
    with pytest.raises(AnchorRejected, match="ZeroRoot"):
        chain.send_anchor(ZERO, r1, 1, "w2")
    anchor(chain, r2, r1, 5, "w2")
    assert chain.last_root() == r2 and chain.window_count() == 2
    assert chain.anchor_of(r2).prev_root == r1  # type: ignore[union-attr]
    assert chain.anchor_of(os.urandom(32)) is None


def test_only_the_owner_anchors(chain: Chain, anvil: Anvil) -> None:
    intruder = Chain.connect(chain_settings(anvil), private_key=OTHER_DEV_KEY, contract_address=chain.address)
    with pytest.raises(AnchorRejected) as refused:
        intruder.send_anchor(os.urandom(32), ZERO, 1, "w1")
    assert refused.value.error == "OwnableUnauthorizedAccount"
    assert intruder.sender == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # funded: refused for its key only
    assert refused.value.error_args[0].lower() == intruder.sender.lower()
    reader = Chain.connect(chain_settings(anvil), private_key="", contract_address=chain.address)
    with pytest.raises(ChainError, match="no anchoring key"):
        reader.send_anchor(os.urandom(32), ZERO, 1, "w1")
    assert chain.window_count() == 0


def test_proofs_verify_on_chain(chain: Chain) -> None:
    records = [json.dumps({"schema": "inspection/1", "n": i}).encode() for i in range(7)]
    leaves = [leaf_hash(r) for r in records]
    tree = MerkleTree.build(leaves)
    anchor(chain, tree.root, ZERO, len(leaves))
    for i, leaf in enumerate(leaves):
        assert chain.verify_on_chain(tree.proof(i), tree.root, leaf)
    assert not chain.verify_on_chain(tree.proof(2), tree.root, leaf_hash(records[2] + b" "))  # tampered record
    assert not chain.verify_on_chain(tree.proof(2), tree.root, leaves[3])  # another leaf, wrong path
    with pytest.raises(ContractReverted, match="NotAnchored"):
        chain.verify_on_chain(tree.proof(2), os.urandom(32), leaves[2])

    big = MerkleTree.build([os.urandom(32) for _ in range(1000)])
    anchor(chain, big.root, tree.root, len(big))
    for i in (0, 1, 500, 999):
        assert chain.verify_on_chain(big.proof(i), big.root, big.leaf(i))
    one = MerkleTree.build([leaf_hash(b"alone")])  # one leaf: root = leaf, empty proof
    anchor(chain, one.root, big.root, 1)
    assert chain.verify_on_chain([], one.root, leaf_hash(b"alone"))


def test_gas_does_not_depend_on_window_size(chain: Chain) -> None:
    first = MerkleTree.build([os.urandom(32)])
    anchor(chain, first.root, ZERO)  # the first window writes zero slots: not comparable
    small = MerkleTree.build([os.urandom(32)])
    large = MerkleTree.build([os.urandom(32) for _ in range(100_000)])
    gas_small = anchor(chain, small.root, first.root, len(small), "2026-01-01T01")
    gas_large = anchor(chain, large.root, small.root, len(large), "2026-01-01T02")
    assert abs(gas_large - gas_small) < 300, (gas_small, gas_large)  # only calldata bytes of the count differ
    assert gas_small < 120_000


def test_reorg_drops_an_anchor(chain: Chain, anvil: Anvil) -> None:
    r1, r2 = os.urandom(32), os.urandom(32)
    anchor(chain, r1, ZERO)
    tx = chain.send_anchor(r2, r1, 1, "w2")
    chain.wait_mined(tx)
    landed = chain.receipt(tx)
    assert landed is not None and chain.is_canonical(landed.block_number, landed.block_hash)
    anvil.rpc("anvil_reorg", 1, [])  # replace the head block by one without our transaction
    assert chain.receipt(tx) is None
    assert not chain.is_canonical(landed.block_number, landed.block_hash)
    assert chain.head() == landed.block_number  # same height, another block
    assert chain.last_root() == r1 and chain.anchor_of(r2) is None
    again = chain.send_anchor(r2, r1, 1, "w2")  # re-queued: sent again, lands again
    chain.wait_mined(again)
    assert chain.receipt(again) is not None and chain.last_root() == r2


def test_finality_trails_the_head(chain: Chain, anvil: Anvil) -> None:
    tx = chain.send_anchor(os.urandom(32), ZERO, 1, "w1")
    chain.wait_mined(tx)
    receipt = chain.receipt(tx)
    assert receipt is not None and chain.finalized_block() < receipt.block_number
    assert chain.depth(receipt.block_number) == 1
    anvil.rpc("anvil_mine", "0x3")
    assert chain.depth(receipt.block_number) == 4
    assert chain.finalized_block() == chain.head() - 2 >= receipt.block_number  # --slots-in-an-epoch 1


def test_node_down_then_back_with_its_state(chain: Chain, anvil: Anvil) -> None:
    r1 = os.urandom(32)
    anchor(chain, r1, ZERO)
    anvil.stop()  # SIGTERM: anvil writes --state
    for call in (
        chain.head,
        chain.last_root,
        chain.finalized_block,
        lambda: chain.send_anchor(os.urandom(32), r1, 1, "w"),
    ):
        with pytest.raises(ChainUnavailable):
            call()
    with pytest.raises(ChainUnavailable):
        Chain.connect(chain_settings(anvil), private_key=ANVIL_DEV_KEY)
    anvil.start()
    assert chain.last_root() == r1 and chain.window_count() == 1
    anchor(chain, os.urandom(32), r1)


def test_ensure_contract_deploys_once(chain: Chain, anvil: Anvil, tmp_path: Path) -> None:
    state = tmp_path / "trace_anchor.json"  # written by the chain fixture
    recorded = json.loads(state.read_text())
    assert recorded["address"] == chain.address and recorded["chain_id"] == 31337
    assert recorded["block_number"] >= 1 and recorded["code_hash"] == "0x" + chain.artifact.code_hash.hex()
    head = chain.head()
    again = Chain.connect(chain_settings(anvil), private_key=ANVIL_DEV_KEY)
    assert again.ensure_contract(state) == chain.address and chain.head() == head  # nothing deployed
    state.write_text(json.dumps({**recorded, "chain_id": 1}))  # a record of another chain
    assert again.ensure_contract(state) != chain.address
    assert json.loads(state.read_text())["address"] == again.address
    configured = Chain.connect(chain_settings(anvil), private_key=ANVIL_DEV_KEY, contract_address=chain.address)
    assert configured.ensure_contract(tmp_path / "unused.json") == chain.address
    assert not (tmp_path / "unused.json").exists()
    wrong = Chain.connect(chain_settings(anvil), private_key=ANVIL_DEV_KEY, contract_address=configured.sender or "")
    with pytest.raises(ContractMismatch):
        wrong.ensure_contract(None)  # an account, not our contract


def test_key_from_file_and_never_shown(anvil: Anvil, tmp_path: Path) -> None:
    key_file = tmp_path / "anchoring.key"
    key_file.write_text(ANVIL_DEV_KEY + "\n")
    settings = chain_settings(anvil, CHAIN_PRIVATE_KEY_FILE=str(key_file), CHAIN_CONFIRMATIONS=5)
    chain = Chain.connect(settings)
    assert chain.sender == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266" and chain.confirmations == 5
    secret = ANVIL_DEV_KEY.removeprefix("0x")
    assert secret not in repr(chain) and secret not in repr(settings) and secret not in str(vars(chain))
    with pytest.raises(ChainError) as bad:
        Chain.connect(chain_settings(anvil, CHAIN_PRIVATE_KEY="0x" + "zz" * 32))
    assert "zz" not in str(bad.value) and bad.value.__cause__ is None and bad.value.__context__ is not None
    with pytest.raises(ContractMismatch, match="CHAIN_ID"):
        Chain.connect(chain_settings(anvil, CHAIN_ID=1))


def test_artifact_is_recompiled_when_stale_and_missing_node_says_make_deps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger import solc

    fresh = solc.load_artifact()
    record = fresh.to_json()
    (tmp_path / "TraceAnchor.json").write_text(json.dumps({**record, "sourceHash": "0" * 64, "abi": []}))
    rebuilt = solc.load_artifact(build_dir=tmp_path)  # stale: compiled again, not trusted
    assert rebuilt.abi == fresh.abi and rebuilt.deployed_bytecode == fresh.deployed_bytecode
    assert json.loads((tmp_path / "TraceAnchor.json").read_text())["sourceHash"] == solc.source_hash()
    monkeypatch.setenv("PATH", str(tmp_path))  # no node on PATH
    with pytest.raises(solc.CompileError, match="make deps"):
        solc.compile_contract(build_dir=tmp_path)
