"""Standalone verifier of proof bundles: needs the bundle, any Ethereum RPC endpoint, and the chain id
and TraceAnchor address that the caller knows to be the county's (never taken from the bundle);
nothing else of ours (no database, no InfluxDB, no server). `village verify-bundle FILE --rpc URL
--chain-id N --contract 0x...`.

The README ("Checking a bundle without us") lists the same steps for other languages:

1. chain: the RPC endpoint must serve the expected chain id and hold code at the expected address;
   a bundle whose `chain` names another chain or contract fails, whatever its records prove there;
2. each record: `canonical` must be RFC 8785 canonical JSON of {schema, content, salt}; its leaf =
   keccak256(keccak256(bytes)) must equal the bundle's `leaf`; the proof folds (sorted pairs) to the
   window's root; `anchors(root)` on the expected contract records it with the window's leaf count
   and previous root; the transaction succeeded, in the block the contract recorded, and carries
   the contract's `Anchored` event for that root. A block or log index other than the bundle's (a
   reorganisation re-included the transaction) is a note, not a failure: the chain's position
   counts. A root the contract does not hold whose transaction is gone from the chain is reported
   as not anchored now (dropped by a reorganisation or a reset chain), not as an altered record;
   either way nothing is proven;
3. completeness: every leaf listed by a proven manifest ("manifest/1") of the subject must be the
   leaf of a proven record of the bundle (a record left out fails, named by kind and leaf), and
   every proven record must be listed by one (nothing from another lot passes as this one's);
4. subject: what the bundle's `subject` claims (lot code, quantities, inspection counts, plots,
   monitored days) must equal what its proven records say; fields no record covers are listed as
   unproven;
5. freshness: manifests are ordered by where the chain put them (block, log index), never by
   fields of the bundle. Whether a newer manifest of the subject sits in a later window cannot be
   established from the chain alone (windows hold only roots): the result says how many windows
   were anchored after the newest manifest presented, and `provably_newest` only when none was.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import rfc8785
from web3 import Web3
from web3.exceptions import BadFunctionCallOutput, ContractLogicError

from ledger.merkle import leaf_hash, process_proof

FORMAT = "village-proof/1"
MANIFEST = "manifest/1"
LOT = "lot/1"
INSPECTION = "inspection/1"
GROWTH = "growth/1"

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
    },
    {
        "name": "lastRoot",
        "type": "function",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "bytes32"}],
    },
]
ANCHORED_TOPIC = Web3.keccak(text="Anchored(bytes32,bytes32,uint32,string,uint64)")
WHERE_TO_FIND = (
    "use the chain id and TraceAnchor address that the county publishes for its ledger (its operators "
    "print them with `village anchor --once`; they are recorded in VILLAGE_DATA_DIR/chain/trace_anchor.json "
    "or set as CHAIN_ID and CHAIN_CONTRACT_ADDRESS), never the ones written in the bundle"
)


class VerifierConfigError(ValueError):
    """The caller did not say which chain and contract to trust, or said it in a malformed way."""


@dataclass
class BundleRecordResult:
    kind: str
    ok: bool
    window: str | None
    block_number: int | None
    leaf: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what does not fail the record, e.g. an anchor a reorg moved


#: a window's problems, notes, and where the chain put its anchor (block, log index, time) if no problem
RootCheck = tuple[list[str], list[str], tuple[int, int, int] | None]


@dataclass
class ManifestCheck:
    """A proven manifest of the subject and how much of it the bundle proves."""

    lot: str
    leaf: str
    root: str  # the root of its window
    block_number: int
    log_index: int
    anchored_at: int  # block time (Unix seconds) recorded by the contract
    listed: int
    missing: list[str]  # listed leaves that no proven record of the bundle produces
    missing_by_kind: dict[str, int]
    newest_in_bundle: bool = False
    later_windows: int | None = None  # windows the contract anchored after this manifest's (None: unknown)
    provably_newest: bool = False  # its window is the contract's last one: no newer manifest can exist


@dataclass
class BundleResult:
    ok: bool
    records: list[BundleRecordResult]
    pending: int
    chain_id: int
    contract: str
    problems: list[str] = field(default_factory=list)  # about the bundle as a whole
    manifests: list[ManifestCheck] = field(default_factory=list)
    unproven: list[str] = field(default_factory=list)  # subject fields no anchored record covers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _b(hex_str: str) -> bytes:
    return bytes.fromhex(hex_str.removeprefix("0x"))


def _hex(b: bytes) -> str:
    return "0x" + bytes(b).hex()


def expected_contract(address: str | None) -> str:
    """The caller's contract address, checksummed; VerifierConfigError if missing or malformed."""
    if not address:
        raise VerifierConfigError(f"no expected TraceAnchor address: {WHERE_TO_FIND}")
    if not Web3.is_address(address):
        raise VerifierConfigError(f"{address!r} is not an Ethereum address")
    return Web3.to_checksum_address(address)


@dataclass
class _Proven:
    """A record whose proof checked: its parsed record and where the chain put its window."""

    leaf: str
    schema: str
    content: dict[str, Any]
    block_number: int
    log_index: int
    timestamp: int
    root: str


def verify_bundle(bundle: dict[str, Any], rpc_url: str, *, chain_id: int | None, contract: str | None) -> BundleResult:
    """Check `bundle` against the chain `chain_id` and the TraceAnchor at `contract`, both from the
    caller (VerifierConfigError when either is missing): see the module docstring for the steps."""
    if chain_id is None:
        raise VerifierConfigError(f"no expected chain id: {WHERE_TO_FIND}")
    address = expected_contract(contract)
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
    node_id = int(w3.eth.chain_id)
    result = BundleResult(False, [], len(bundle.get("pending", [])), node_id, address)
    if node_id != chain_id:
        result.problems.append(f"the RPC endpoint serves chain {node_id}, not the expected chain {chain_id}")
        return result
    if not bytes(w3.eth.get_code(address)):
        result.problems.append(f"there is no contract at {address} on chain {chain_id}: check the address")
        return result
    if bundle.get("format") != FORMAT:
        result.problems.append(f"format {bundle.get('format')!r}, expected {FORMAT!r}")
    named = bundle.get("chain") or {}
    if named.get("chain_id") != chain_id:
        result.problems.append(
            f"the bundle names chain {named.get('chain_id')}, not the expected chain {chain_id}: "
            "its records are not anchored where the county anchors"
        )
    named_contract = str(named.get("contract") or "")
    if not Web3.is_address(named_contract) or Web3.to_checksum_address(named_contract) != address:
        result.problems.append(
            f"the bundle names contract {named_contract or '(none)'}, not the expected TraceAnchor {address}: "
            "anyone can deploy a TraceAnchor and anchor altered records in it"
        )
    anchor = w3.eth.contract(address=address, abi=ANCHORS_ABI)
    roots: dict[str, RootCheck] = {}
    proven: list[_Proven] = []
    for rec in bundle.get("records", []):
        res, parsed = _check_record(w3, anchor, rec, roots)
        result.records.append(res)
        if res.ok and parsed is not None:
            proven.append(parsed)
    pending = [_pending_content(p) for p in bundle.get("pending", []) if isinstance(p, dict)]
    result.problems += _completeness(bundle.get("subject") or {}, proven, [p for p in pending if p], result)
    _freshness(w3, anchor, result.manifests)
    result.ok = bool(result.records) and all(r.ok for r in result.records) and not result.problems
    return result


def _check_record(
    w3: Web3, anchor: Any, rec: dict[str, Any], roots: dict[str, RootCheck]
) -> tuple[BundleRecordResult, _Proven | None]:
    window = rec.get("window") or {}
    res = BundleRecordResult(str(rec.get("kind")), False, window.get("id"), window.get("block_number"))
    text = str(rec.get("canonical", ""))
    try:
        parsed = json.loads(text)
        canonical_ok = rfc8785.dumps(parsed) == text.encode("utf-8")
    except (ValueError, TypeError, rfc8785.CanonicalizationError):
        parsed, canonical_ok = None, False
    if not isinstance(parsed, dict) or not {"schema", "content", "salt"} <= parsed.keys():
        res.problems.append("the record is not a JSON object of schema, content and salt")
        return res, None
    if not canonical_ok:
        res.problems.append("the record's bytes are not RFC 8785 canonical JSON")
    schema = str(parsed["schema"])
    if schema != res.kind:
        res.problems.append(f"the bundle labels it {res.kind}, its bytes say {schema}")
        res.kind = schema
    leaf = _hex(leaf_hash(text.encode("utf-8")))
    res.leaf = leaf
    if leaf != rec.get("leaf"):
        res.problems.append("the record's bytes do not hash to the bundle's leaf")
    root = str(window.get("root", ""))
    try:
        folded = _hex(process_proof(_b(leaf), [_b(p) for p in rec.get("proof", [])]))
    except ValueError:
        folded = ""
    if folded != root:
        res.problems.append("the proof does not lead from the record to the window's root")
    if root not in roots:
        roots[root] = _check_root(w3, anchor, window)
    root_problems, notes, position = roots[root]
    res.problems += root_problems
    res.notes = list(notes)
    res.ok = not res.problems
    if not res.ok or position is None or not isinstance(parsed["content"], dict):
        return res, None
    block_number, log_index, timestamp = position
    return res, _Proven(leaf, schema, parsed["content"], block_number, log_index, timestamp, root)


def _check_root(w3: Web3, anchor: Any, window: dict[str, Any]) -> RootCheck:
    """Problems with a window's root on the expected contract, notes, and (block, log index, time) when none."""
    try:
        root = _b(str(window["root"]))
        if len(root) != 32:
            raise ValueError
    except (KeyError, ValueError):
        return ["the window has no valid root"], [], None
    try:
        timestamp, block_number, leaf_count, prev_root = anchor.functions.anchors(root).call()
    except (ContractLogicError, BadFunctionCallOutput):
        return [f"{anchor.address} does not answer anchors(root): it is not a TraceAnchor"], [], None
    tx = window.get("tx_hash")
    try:
        receipt = w3.eth.get_transaction_receipt(str(tx))
    except Exception:  # not found (never mined, or its block left the chain), or not a transaction hash
        receipt = None
    if block_number == 0:
        if receipt is None:  # an anchoring state, not evidence of tampering; but nothing is proven
            dropped = (
                f"root {window['root']} is not anchored now: transaction {tx} is not on the chain (a reorganisation "
                "dropped it, or the chain was reset); the county anchors the window again: ask for a fresh bundle"
            )
            return [dropped], [], None
        return [f"root {window['root']} is not recorded by the expected contract {anchor.address}"], [], None
    problems = []
    if leaf_count != window.get("leaf_count"):
        problems.append(
            f"the contract records {leaf_count} leaves for this root, the bundle {window.get('leaf_count')}"
        )
    if _hex(prev_root) != window.get("prev_root"):
        problems.append("the contract records another previous root for this window")
    if receipt is None or receipt["status"] != 1:
        return [*problems, f"transaction {tx} is not a successful transaction"], [], None
    logs = [
        log
        for log in receipt["logs"]
        if Web3.to_checksum_address(log["address"]) == anchor.address
        and bytes(log["topics"][0]) == bytes(ANCHORED_TOPIC)
        and bytes(log["topics"][1]) == root
    ]
    if not logs or receipt["blockNumber"] != block_number:
        return [*problems, f"transaction {tx} did not anchor this root where the contract recorded it"], [], None
    log_index, notes = int(logs[0]["logIndex"]), []
    named = (window.get("block_number"), window.get("block_hash"), window.get("log_index"))
    if named != (block_number, _hex(receipt["blockHash"]), log_index):  # the chain's position counts
        notes.append(
            f"a reorganisation re-included the anchor in block {block_number} ({_hex(receipt['blockHash'])}, log "
            f"index {log_index}); the bundle names block {named[0]} ({named[1]}, log index {named[2]})"
        )
    return problems, notes, (int(block_number), log_index, int(timestamp))


def _subject_lots(subject: dict[str, Any]) -> list[dict[str, Any]]:
    if subject.get("type") == "lot":
        return [{"uri": subject.get("uri"), "code": subject.get("code")}]
    if subject.get("type") == "production_record":
        return [lot for lot in subject.get("lots", []) if isinstance(lot, dict)]
    return []


def _pending_content(entry: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(schema, content) of a pending record: shown, not provable; counted only towards the subject's totals."""
    try:
        parsed = json.loads(str(entry.get("canonical", "")))
    except ValueError:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("content"), dict):
        return str(parsed.get("schema")), parsed["content"]
    return None


def _completeness(
    subject: dict[str, Any], proven: list[_Proven], pending: list[tuple[str, dict[str, Any]]], result: BundleResult
) -> list[str]:
    """Steps 3 and 4: the subject's proven manifests against the proven records, and its claims."""
    problems: list[str] = []
    lots = _subject_lots(subject)
    if not lots:
        return [f"unknown or empty subject {subject.get('type')!r}: nothing to check the records against"]
    by_leaf = {p.leaf: p for p in proven}
    uris = {str(lot.get("uri")) for lot in lots}
    manifests = [p for p in proven if p.schema == MANIFEST and p.content.get("lot") in uris]
    listed: set[str] = set()
    for uri in sorted(uris):
        own = sorted((m for m in manifests if m.content.get("lot") == uri), key=lambda m: (m.block_number, m.log_index))
        if not own:
            problems.append(
                f"no anchored manifest of {uri} is proven by the bundle: its completeness cannot be checked"
            )
            continue
        for m in own:
            leaves = [str(x) for x in m.content.get("leaves", [])]
            listed.update(leaves)
            missing = [x for x in leaves if x not in by_leaf]
            present = Counter(by_leaf[x].schema for x in leaves if x in by_leaf)
            counts = {str(k): int(v) for k, v in (m.content.get("counts") or {}).items()}
            by_kind = {k: n - present.get(k, 0) for k, n in counts.items() if n > present.get(k, 0)}
            check = ManifestCheck(
                uri,
                m.leaf,
                m.root,
                m.block_number,
                m.log_index,
                m.timestamp,
                len(leaves),
                missing,
                by_kind,
                m is own[-1],
            )
            result.manifests.append(check)
            if missing:
                kinds = ", ".join(f"{n} {k}" for k, n in sorted(by_kind.items())) or f"{len(missing)} record(s)"
                problems.append(
                    f"the manifest of {uri} anchored in block {m.block_number} lists {len(missing)} record(s) "
                    f"this bundle does not prove ({kinds}): {', '.join(missing)}"
                )
            elif dict(present) != counts:
                problems.append(f"the manifest of {uri} anchored in block {m.block_number} miscounts its records")
    manifest_leaves = {m.leaf for m in manifests}
    stray = [p for p in proven if p.leaf not in listed and p.leaf not in manifest_leaves]
    for p in stray:
        problems.append(
            f"{p.schema} record {p.leaf} is anchored but listed by no anchored manifest of the subject: "
            "it is not part of this trace"
        )
    problems += _claims(subject, lots, [p for p in proven if p.leaf in listed], pending, result)
    return problems


def _claims(
    subject: dict[str, Any],
    lots: list[dict[str, Any]],
    listed: list[_Proven],
    pending: list[tuple[str, dict[str, Any]]],
    result: BundleResult,
) -> list[str]:
    """Step 4: what the subject says against what its proven, listed records say. Totals (inspections,
    monitored days) also count the bundle's pending records, which the result reports as not provable."""
    problems: list[str] = []
    lot_records = {p.content.get("lot"): p.content for p in listed if p.schema == LOT}
    for lot in lots:
        content = lot_records.get(lot.get("uri"))
        if content is None:
            problems.append(f"no proven lot record for {lot.get('uri')}")
            continue
        for key in ("code", "quantity", "unit"):
            if key in lot and lot[key] != content.get(key):
                problems.append(
                    f"the subject says {lot.get('uri')} has {key} {lot[key]!r}, its record {content.get(key)!r}"
                )
    if subject.get("type") != "production_record":
        return problems
    uris = {lot.get("uri") for lot in lots}
    own = [lot_records[u] for u in uris if u in lot_records]
    for key, claim in (("farm", subject.get("farm")), ("harvest_year", subject.get("season"))):
        wrong = sorted(str(c.get("lot")) for c in own if c.get(key) != claim)
        if wrong:
            problems.append(f"the subject's {key} is {claim!r}, but not that of {', '.join(wrong)}")
    contents = [(p.schema, p.content) for p in listed] + pending
    inspections = [c for k, c in contents if k == INSPECTION and c.get("lot") in uris]
    counted = {"total": len(inspections), "passed": sum(bool(c.get("passed")) for c in inspections)}
    if subject.get("inspections") != counted:
        problems.append(f"the subject counts inspections {subject.get('inspections')}, the records {counted}")
    days = sum(int(c.get("days_monitored") or 0) for k, c in contents if k == GROWTH and c.get("lot") in uris)
    if subject.get("monitored_days") != days:
        problems.append(f"the subject counts {subject.get('monitored_days')} monitored days, the records {days}")
    plots = sorted({str(s["plot"]) for c in own for s in c.get("sources", []) if isinstance(s, dict) and "plot" in s})
    claimed = sorted(str(p.get("plot_no")) for p in subject.get("plots", []) if isinstance(p, dict))
    if claimed != plots:
        problems.append(f"the subject lists plots {claimed}, the lot records {plots}")
    result.unproven = ["area_mu", "plots[].area_mu", "plots[].crop"]  # registry facts, not trace records
    return problems


def _freshness(w3: Web3, anchor: Any, checks: list[ManifestCheck]) -> None:
    """Step 5: windows anchored after each subject lot's newest manifest (from the chain alone)."""
    newest = [c for c in checks if c.newest_in_bundle]
    if not newest:
        return
    last = _hex(anchor.functions.lastRoot().call())
    for c in newest:
        c.provably_newest = c.root == last  # the contract's last window: nothing can be newer
    try:
        logs = w3.eth.get_logs(
            {
                "address": anchor.address,
                "fromBlock": min(c.block_number for c in newest),
                "toBlock": "latest",
                "topics": [_hex(ANCHORED_TOPIC)],
            }
        )
    except Exception:  # a public endpoint may refuse wide log ranges: the count stays unknown
        return
    positions = [(int(log["blockNumber"]), int(log["logIndex"])) for log in logs]
    for c in newest:
        c.later_windows = sum(p > (c.block_number, c.log_index) for p in positions)


def load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError("a proof bundle is a JSON object")
    return data
