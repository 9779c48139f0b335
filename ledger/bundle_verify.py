"""Standalone verifier of proof bundles: needs the bundle and any Ethereum RPC endpoint, nothing else
of ours (no database, no InfluxDB, no server). `village verify-bundle FILE --rpc URL`.

For every record of the bundle (the README lists the same steps for other languages):
1. leaf = keccak256(keccak256(UTF-8 bytes of `canonical`)); it must equal the bundle's `leaf`;
2. fold the proof: node = leaf; for each sibling s: node = keccak256(min(node, s) || max(node, s));
   the result must equal the window's root;
3. ask the chain: `anchors(root)` on the contract must be recorded (block number > 0) with the
   window's leaf count and previous root;
4. the transaction's receipt must be in the block with the bundle's hash, succeed, and carry at
   the bundle's log index an `Anchored` event of the contract whose first topic argument is root.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from web3 import Web3

from ledger.merkle import leaf_hash, process_proof

ANCHORS_ABI = [
    {
        "name": "anchors",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "root", "type": "bytes32"}],
        "outputs": [
            {"name": "timestamp", "type": "uint64"},
            {"name": "blockNumber", "type": "uint64"},
            {"name": "leafCount", "type": "uint32"},
            {"name": "prevRoot", "type": "bytes32"},
        ],
    }
]
ANCHORED_TOPIC = Web3.keccak(text="Anchored(bytes32,bytes32,uint32,string,uint64)")


@dataclass
class BundleRecordResult:
    kind: str
    ok: bool
    window: str | None
    block_number: int | None
    problems: list[str] = field(default_factory=list)


@dataclass
class BundleResult:
    ok: bool
    records: list[BundleRecordResult]
    pending: int
    chain_id: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _b(hex_str: str) -> bytes:
    return bytes.fromhex(hex_str.removeprefix("0x"))


def verify_bundle(bundle: dict[str, Any], rpc_url: str) -> BundleResult:
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
    chain_id = int(w3.eth.chain_id)
    problems_all: list[BundleRecordResult] = []
    expected_chain = bundle["chain"].get("chain_id")
    contract_addr = Web3.to_checksum_address(bundle["chain"]["contract"])
    contract = w3.eth.contract(address=contract_addr, abi=ANCHORS_ABI)
    roots_checked: dict[str, list[str]] = {}
    for rec in bundle["records"]:
        window = rec["window"]
        res = BundleRecordResult(rec["kind"], False, window.get("id"), window.get("block_number"))
        if expected_chain is not None and chain_id != expected_chain:
            res.problems.append(f"the RPC endpoint is chain {chain_id}, the bundle says {expected_chain}")
        leaf = leaf_hash(rec["canonical"].encode("utf-8"))
        if "0x" + leaf.hex() != rec["leaf"]:
            res.problems.append("the record's bytes do not hash to the bundle's leaf")
        root = process_proof(leaf, [_b(p) for p in rec["proof"]])
        if "0x" + root.hex() != window["root"]:
            res.problems.append("the proof does not lead from the record to the window's root")
        if window["root"] not in roots_checked:
            roots_checked[window["root"]] = _check_root(w3, contract, window)
        res.problems += roots_checked[window["root"]]
        res.ok = not res.problems
        problems_all.append(res)
    ok = all(r.ok for r in problems_all) and bool(problems_all)
    return BundleResult(ok, problems_all, len(bundle.get("pending", [])), chain_id)


def _check_root(w3: Web3, contract: Any, window: dict[str, Any]) -> list[str]:
    problems = []
    root = _b(window["root"])
    _ts, block_number, leaf_count, prev_root = contract.functions.anchors(root).call()
    if block_number == 0:
        return [f"root {window['root']} is not recorded by the contract"]
    if leaf_count != window["leaf_count"]:
        problems.append(f"the contract records {leaf_count} leaves for this root, the bundle {window['leaf_count']}")
    if "0x" + bytes(prev_root).hex() != window["prev_root"]:
        problems.append("the contract records another previous root for this window")
    receipt = w3.eth.get_transaction_receipt(window["tx_hash"])
    if receipt is None or receipt["status"] != 1:
        return [*problems, f"transaction {window['tx_hash']} is not a successful transaction"]
    if "0x" + bytes(receipt["blockHash"]).hex() != window["block_hash"] or receipt["blockNumber"] != block_number:
        problems.append("the transaction is not in the block the bundle names")
    logs = [log for log in receipt["logs"] if int(log["logIndex"]) == window["log_index"]]
    if (
        not logs
        or Web3.to_checksum_address(logs[0]["address"]) != contract.address
        or bytes(logs[0]["topics"][0]) != bytes(ANCHORED_TOPIC)
        or bytes(logs[0]["topics"][1]) != root
    ):
        problems.append("no Anchored event of the contract for this root at the bundle's log index")
    return problems


def load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
