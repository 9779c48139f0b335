"""The ledger's chain client: deploys TraceAnchor, sends anchors, reads receipts, spots reorganisations.

Any EVM chain by JSON-RPC URL and key (anvil locally). The anchoring key signs locally and
transactions go out raw (`eth_sendRawTransaction`), so the node never holds the key. The key
is read from settings (CHAIN_PRIVATE_KEY, or the file CHAIN_PRIVATE_KEY_FILE), never logged,
never in a repr or an error message. A published development key (anvil's and hardhat's accounts)
is refused on any chain id but the devnet's, 31337 (`DevKeyRefused`).

Errors come as two kinds the anchorer can act on: `ChainUnavailable` (the node cannot be
reached or fails: retry later) and `ContractReverted`, with `AnchorRejected` for `anchor`
(the contract refuses: wrong prevRoot, root already anchored, not the owner...), whose
`reason` names the Solidity error and its arguments.

Reorganisations: a receipt counts only while its block is on the canonical chain
(`receipt()` returns None otherwise), and `is_canonical(number, hash)` tells whether a block
recorded earlier is still there; an anchor at or below `finalized_block()` cannot go away.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak
from web3 import Web3
from web3.exceptions import (
    BadFunctionCallOutput,
    BlockNotFound,
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    ProviderConnectionError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)
from web3.logs import DISCARD
from web3.middleware import ExtraDataToPOAMiddleware
from web3.providers.rpc.utils import ExceptionRetryConfiguration

from core.settings import Settings, get_settings
from ledger.solc import Artifact, load_artifact

T = TypeVar("T")
ZERO32 = b"\0" * 32


class ChainError(RuntimeError):
    pass


class ChainUnavailable(ChainError):
    """The node cannot be reached or did not answer properly; try again later."""


class ContractReverted(ChainError):
    """The contract refused a call; `error` is the Solidity error name, `args` its arguments."""

    def __init__(self, reason: str, error: str = "", args: tuple[Any, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        self.error_args = args


class AnchorRejected(ContractReverted):
    """TraceAnchor refused an anchor (ZeroRoot, AlreadyAnchored, WrongPrevRoot, not the owner)."""


class ContractMismatch(ChainError):
    """No TraceAnchor with our bytecode at the configured address, or another chain than expected."""


class DevKeyRefused(ChainError):
    """A public development key (anvil's and hardhat's) on a chain other than the local devnet."""


#: The local devnet's chain id (anvil's and hardhat's default): the only one where a dev key may sign.
DEV_CHAIN_ID = 31337
#: Accounts of the public development mnemonic "test test ... junk" (m/44'/60'/0'/0/0..19) that anvil
#: and hardhat fund by default: their private keys are published, so whoever anchors with one of them
#: on a real chain lets anyone anchor as us. tests/test_anchor_key.py derives them again.
DEV_ACCOUNTS = frozenset(
    {
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
        "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
        "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
        "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc",
        "0x976EA74026E726554dB657fA54763abd0C3a0aa9",
        "0x14dC79964da2C08b23698B3D3cc7Ca32193d9955",
        "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f",
        "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720",
        "0xBcd4042DE499D14e55001CcbB24a551F3b954096",
        "0x71bE63f3384f5fb98995898A86B02Fb2426c5788",
        "0xFABB0ac9d68B0B445fB7357272Ff202C5651694a",
        "0x1CBd3b2770909D4e10f157cABC84C7264073C9Ec",
        "0xdF3e18d64BC6A983f673Ab319CCaE4f1a57C7097",
        "0xcd3B766CCDd6AE721141F452C550Ca635964ce71",
        "0x2546BcD3c84621e976D8185a91A922aE77ECEc30",
        "0xbDA5747bFD65F08deb54cb465eB87D40e51B197E",
        "0xdD2FD4581271e230360230F9337D5c0430Bf44C0",
        "0x8626f6940E2eb28930eFb4CeF49B2d1F2C9C1199",
    }
)


def refuse_dev_key(address: str, chain_id: int) -> None:
    """DevKeyRefused when `address` is a public development account and `chain_id` is not the devnet's."""
    if address in DEV_ACCOUNTS and chain_id != DEV_CHAIN_ID:
        raise DevKeyRefused(
            f"the anchoring key is a public development key of anvil/hardhat (account {address}): anyone can "
            f"sign with it, so it is refused on chain {chain_id} (only the local devnet, chain {DEV_CHAIN_ID}, "
            "may use it). Put the key of an account that only anchors in CHAIN_PRIVATE_KEY_FILE"
        )


@dataclass(frozen=True)
class AnchorReceipt:
    """Where an anchoring transaction landed. `log_index` is that of its Anchored event."""

    tx_hash: bytes
    block_number: int
    block_hash: bytes
    log_index: int | None
    gas_used: int
    status: int  # 1: executed; 0: reverted on chain
    root: bytes | None = None
    prev_root: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.status == 1 and self.log_index is not None


@dataclass(frozen=True)
class AnchorRecord:
    """What the contract stored for a root (`anchors(root)`)."""

    root: bytes
    timestamp: int
    block_number: int
    leaf_count: int
    prev_root: bytes


@dataclass(frozen=True)
class Deployment:
    """A deployed TraceAnchor, as recorded in the state file of `ensure_contract`."""

    address: str
    chain_id: int
    block_number: int
    block_hash: str
    tx_hash: str
    code_hash: str


def _hex(b: bytes) -> str:
    return "0x" + bytes(b).hex()


def _b32(value: bytes | str, name: str) -> bytes:
    raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
    if len(raw) != 32:
        raise ValueError(f"{name} must be 32 bytes, got {len(raw)}")
    return raw


def _read_key(settings: Settings) -> str | None:
    key = settings.chain_private_key.get_secret_value().strip()
    if not key and settings.chain_private_key_file:
        try:
            key = settings.chain_private_key_file.read_text().strip()
        except OSError as e:
            raise ChainError(f"cannot read CHAIN_PRIVATE_KEY_FILE {settings.chain_private_key_file}: {e}") from None
    return key or None


def _rpc(call: Callable[[], T]) -> T:
    """Run one node request; connection-level failures become ChainUnavailable."""
    try:
        return call()
    except (requests.RequestException, ProviderConnectionError, ConnectionError, TimeExhausted) as e:
        raise ChainUnavailable(f"chain node unreachable: {type(e).__name__}: {str(e)[:300]}") from None


class Chain:
    """A connection to the chain and (once `ensure_contract` ran) to our TraceAnchor."""

    def __init__(
        self,
        w3: Web3,
        chain_id: int,
        account: LocalAccount | None = None,
        confirmations: int = 2,
        contract_address: str | None = None,
        artifact: Artifact | None = None,
        rpc_url: str = "",
    ) -> None:
        if account is not None:
            refuse_dev_key(account.address, chain_id)
        self.w3 = w3
        self.chain_id = chain_id
        self._account = account
        self.confirmations = confirmations
        self.rpc_url = rpc_url
        self.artifact = artifact or load_artifact("TraceAnchor")
        self._configured_address = contract_address
        self._contract: Any = None
        self._errors = self._error_table(self.artifact.abi)
        self._send_lock = threading.Lock()
        if contract_address:
            self.use_contract(contract_address)

    @classmethod
    def connect(
        cls,
        settings: Settings | None = None,
        *,
        rpc_url: str | None = None,
        private_key: str | None = None,
        contract_address: str | None = None,
    ) -> Chain:
        """Connect as configured (keyword arguments override settings); asks the node for its chain id."""
        settings = settings or get_settings()
        url = rpc_url or settings.chain_rpc_url
        provider = Web3.HTTPProvider(
            url,
            request_kwargs={"timeout": settings.chain_timeout_s},
            exception_retry_configuration=ExceptionRetryConfiguration(
                errors=(requests.ConnectionError, requests.HTTPError, requests.Timeout), retries=2, backoff_factor=0.1
            ),
        )
        w3 = Web3(provider)
        w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)  # PoA chains' long extraData
        key = private_key if private_key is not None else _read_key(settings)
        account = None
        if key:
            try:
                account = Account.from_key(key)
            except Exception:  # never chained: the exception could carry the key
                raise ChainError("the anchoring key is not a valid private key") from None
            if settings.chain_id is not None:  # refuse before asking the node anything
                refuse_dev_key(account.address, settings.chain_id)
        node_id = _rpc(lambda: w3.eth.chain_id)
        if settings.chain_id is not None and settings.chain_id != node_id:
            raise ContractMismatch(f"{url} is chain {node_id}, CHAIN_ID says {settings.chain_id}")
        address = contract_address if contract_address is not None else settings.chain_contract_address
        return cls(w3, node_id, account, settings.chain_confirmations, address or None, rpc_url=url)

    def __repr__(self) -> str:
        address = self._contract.address if self._contract is not None else None
        return f"Chain(rpc_url={self.rpc_url!r}, chain_id={self.chain_id}, sender={self.sender}, contract={address})"

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _reverts(self, kind: type[ContractReverted] = ContractReverted) -> Iterator[None]:
        try:
            yield
        except (ContractCustomError, ContractPanicError, ContractLogicError) as e:
            raise self._decode_revert(e, kind) from None

    @staticmethod
    def _error_table(abi: list[dict[str, Any]]) -> dict[bytes, tuple[str, list[str]]]:
        table = {}
        for item in abi:
            if item.get("type") == "error":
                types = [i["type"] for i in item["inputs"]]
                table[keccak(f"{item['name']}({','.join(types)})".encode())[:4]] = (item["name"], types)
        return table

    def _decode_revert(self, e: ContractLogicError, kind: type[ContractReverted]) -> ContractReverted:
        data = e.data if isinstance(e.data, str) else ""
        raw = bytes.fromhex(data.removeprefix("0x")) if data.startswith("0x") else b""
        if raw[:4] in self._errors:
            name, types = self._errors[raw[:4]]
            args = tuple(abi_decode(types, raw[4:]))
            shown = ", ".join(_hex(a) if isinstance(a, bytes) else str(a) for a in args)
            return kind(f"{name}({shown})", name, args)
        return kind(str(e.message or e), "", ())

    def use_contract(self, address: str) -> None:
        self._contract = self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=self.artifact.abi)

    @property
    def contract(self) -> Any:
        if self._contract is None:
            raise ChainError("no TraceAnchor contract yet: call ensure_contract() or set CHAIN_CONTRACT_ADDRESS")
        return self._contract

    @property
    def address(self) -> str:
        return str(self.contract.address)

    @property
    def sender(self) -> str | None:
        return self._account.address if self._account is not None else None

    def _require_account(self) -> LocalAccount:
        if self._account is None:
            raise ChainError("no anchoring key: set CHAIN_PRIVATE_KEY or CHAIN_PRIVATE_KEY_FILE")
        return self._account

    def _fees(self) -> dict[str, int]:
        block = _rpc(lambda: self.w3.eth.get_block("latest"))
        base = block.get("baseFeePerGas")
        if base is None:  # a chain without EIP-1559
            return {"gasPrice": int(_rpc(lambda: self.w3.eth.gas_price))}
        tip = int(_rpc(lambda: self.w3.eth.max_priority_fee))
        return {"maxFeePerGas": 2 * int(base) + tip, "maxPriorityFeePerGas": tip}

    def _send(self, tx: dict[str, Any]) -> bytes:
        """Sign `tx` locally with an explicit nonce (the sender's pending count) and send it raw.

        One anchoring process per key: nonces come from the node under a lock, so concurrent
        sends in this process never share one, and a transaction dropped by a reorganisation
        frees its nonce for the next send.
        """
        account = self._require_account()
        with self._send_lock:
            nonce = _rpc(lambda: self.w3.eth.get_transaction_count(account.address, "pending"))
            signed = account.sign_transaction({**tx, "nonce": nonce, "chainId": self.chain_id})
            try:
                return bytes(_rpc(lambda: self.w3.eth.send_raw_transaction(signed.raw_transaction)))
            except Web3RPCError as e:
                raise ChainError(f"transaction refused by the node: {e.message or e}") from None

    def wait_mined(self, tx_hash: bytes, timeout: float = 60.0, poll_s: float = 0.1) -> dict[str, Any]:
        """The raw receipt once the transaction is in a block (ChainError after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return dict(_rpc(lambda: self.w3.eth.get_transaction_receipt(tx_hash)))
            except TransactionNotFound:
                if time.monotonic() > deadline:
                    raise ChainError(f"transaction {_hex(tx_hash)} not mined after {timeout:.0f} s") from None
                time.sleep(poll_s)

    # -- contract deployment ---------------------------------------------------------------------

    def code_matches(self, address: str) -> bool:
        code = _rpc(lambda: self.w3.eth.get_code(Web3.to_checksum_address(address)))
        return keccak(bytes(code)) == self.artifact.code_hash

    def deploy(self) -> Deployment:
        """Deploy a new TraceAnchor owned by the anchoring key and wait until it is mined."""
        account = self._require_account()
        factory = self.w3.eth.contract(abi=self.artifact.abi, bytecode=self.artifact.bytecode)
        gas = _rpc(lambda: factory.constructor().estimate_gas({"from": account.address}))
        tx = {"data": factory.constructor().data_in_transaction, "gas": gas * 6 // 5 + 20_000, **self._fees()}
        tx_hash = self._send(tx)
        receipt = self.wait_mined(tx_hash)
        if receipt["status"] != 1 or not receipt.get("contractAddress"):
            raise ChainError(f"deployment transaction {_hex(tx_hash)} failed")
        self.use_contract(receipt["contractAddress"])
        return Deployment(
            address=str(receipt["contractAddress"]),
            chain_id=self.chain_id,
            block_number=int(receipt["blockNumber"]),
            block_hash=_hex(receipt["blockHash"]),
            tx_hash=_hex(tx_hash),
            code_hash=_hex(self.artifact.code_hash),
        )

    def ensure_contract(self, state_path: Path | None = None) -> str:
        """The TraceAnchor to use, deploying one only when needed (idempotent).

        A configured address (CHAIN_CONTRACT_ADDRESS) must hold our bytecode, else
        ContractMismatch. Otherwise the deployment recorded in `state_path` is reused when it
        is on this chain and its code is ours; if not (a fresh devnet, a changed contract), a
        new one is deployed and recorded there (address, chain id, deploy block and hash).
        """
        if self._configured_address:
            if not self.code_matches(self._configured_address):
                raise ContractMismatch(f"{self._configured_address} on chain {self.chain_id} is not our TraceAnchor")
            self.use_contract(self._configured_address)
            return self.address
        if state_path is not None and state_path.exists():
            try:
                recorded = Deployment(**json.loads(state_path.read_text()))
            except (ValueError, TypeError):
                recorded = None
            if recorded and recorded.chain_id == self.chain_id and self.code_matches(recorded.address):
                self.use_contract(recorded.address)
                return self.address
        deployment = self.deploy()
        if state_path is not None:
            state_path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=state_path.parent, suffix=".tmp", delete=False) as tmp:
                json.dump(asdict(deployment), tmp, indent=1)
            os.replace(tmp.name, state_path)
        return self.address

    # -- anchoring -------------------------------------------------------------------------------

    def send_anchor(self, root: bytes, prev_root: bytes, leaf_count: int, window_id: str) -> bytes:
        """Send `anchor(root, prevRoot, leafCount, windowId)`; returns the transaction hash.

        The call is simulated first (eth_estimateGas), so a refusal raises AnchorRejected before
        anything is sent. The transaction can still fail if the chain moves in between: check
        the receipt's status.
        """
        root, prev_root = _b32(root, "root"), _b32(prev_root, "prev_root")
        if not 0 <= leaf_count < 2**32:
            raise ValueError("leaf_count must fit in uint32")
        account = self._require_account()
        call = self.contract.functions.anchor(root, prev_root, leaf_count, window_id)
        with self._reverts(AnchorRejected):
            gas = _rpc(lambda: call.estimate_gas({"from": account.address}))
        data = self.contract.encode_abi("anchor", args=[root, prev_root, leaf_count, window_id])
        tx = {"to": self.contract.address, "data": data, "gas": gas * 6 // 5 + 10_000, "value": 0, **self._fees()}
        return self._send(tx)

    def receipt(self, tx_hash: bytes | str) -> AnchorReceipt | None:
        """The transaction's receipt while its block is canonical; None if not (yet, or any more) mined."""
        tx = _b32(tx_hash, "tx_hash")
        try:
            raw = _rpc(lambda: self.w3.eth.get_transaction_receipt(tx))
        except TransactionNotFound:
            return None
        if raw is None or raw.get("blockHash") is None:
            return None
        number, block_hash = int(raw["blockNumber"]), bytes(raw["blockHash"])
        if not self.is_canonical(number, block_hash):
            return None
        log_index = root = prev_root = None
        if self._contract is not None:
            for event in self.contract.events.Anchored().process_receipt(raw, errors=DISCARD):
                if event["address"] == self.contract.address:
                    log_index = int(event["logIndex"])
                    root, prev_root = bytes(event["args"]["root"]), bytes(event["args"]["prevRoot"])
        return AnchorReceipt(
            tx, number, block_hash, log_index, int(raw["gasUsed"]), int(raw["status"]), root, prev_root
        )

    # -- chain state -----------------------------------------------------------------------------

    def head(self) -> int:
        return int(_rpc(lambda: self.w3.eth.block_number))

    def finalized_block(self) -> int:
        """Number of the chain's finalized block (0 when the node knows none)."""
        try:
            return int(_rpc(lambda: self.w3.eth.get_block("finalized"))["number"])
        except (BlockNotFound, Web3RPCError):
            return 0

    def is_canonical(self, block_number: int, block_hash: bytes | str) -> bool:
        """Whether the block recorded as (number, hash) is still on the canonical chain."""
        expected = _b32(block_hash, "block_hash")
        try:
            block = _rpc(lambda: self.w3.eth.get_block(block_number))
        except BlockNotFound:
            return False
        return bytes(block["hash"]) == expected

    def depth(self, block_number: int) -> int:
        """Confirmations of a block: 1 when it is the head."""
        return max(0, self.head() - block_number + 1)

    def _call(self, name: str, *args: Any) -> Any:
        """A view call of TraceAnchor; ContractMismatch when no contract answers at the address (a reset chain)."""
        try:
            return _rpc(lambda: getattr(self.contract.functions, name)(*args).call())
        except BadFunctionCallOutput:
            raise ContractMismatch(
                f"no TraceAnchor answers at {self.address} on chain {self.chain_id}: the chain was reset, "
                "or the address is wrong"
            ) from None

    def last_root(self) -> bytes:
        return bytes(self._call("lastRoot"))

    def window_count(self) -> int:
        """Windows the contract holds on the canonical chain: they are the ledger's first windows, in order."""
        return int(self._call("windowCount"))

    def anchor_of(self, root: bytes | str) -> AnchorRecord | None:
        """What the contract recorded for `root`, or None if it was never anchored (or no longer is)."""
        key = _b32(root, "root")
        timestamp, block_number, leaf_count, prev_root = self._call("anchors", key)
        if block_number == 0:
            return None
        return AnchorRecord(key, int(timestamp), int(block_number), int(leaf_count), bytes(prev_root))

    def anchor_receipt(self, root: bytes | str, block_number: int) -> AnchorReceipt | None:
        """The successful transaction that anchored `root` in block `block_number` (from its Anchored event)."""
        logs = _rpc(
            lambda: self.contract.events.Anchored().get_logs(
                from_block=block_number, to_block=block_number, argument_filters={"root": _b32(root, "root")}
            )
        )
        for entry in logs:
            r = self.receipt(entry["transactionHash"])
            if r is not None and r.ok:
                return r
        return None

    def verify_on_chain(self, proof: Sequence[bytes], root: bytes | str, leaf: bytes | str) -> bool:
        """The contract's own check (MerkleProof.verify); ContractReverted NotAnchored for an unknown root."""
        args = ([_b32(p, "proof node") for p in proof], _b32(root, "root"), _b32(leaf, "leaf"))
        with self._reverts():
            return bool(_rpc(lambda: self.contract.functions.verify(*args).call()))


def connect(settings: Settings | None = None, **overrides: Any) -> Chain:
    """`Chain.connect`: the chain as configured by CHAIN_* settings."""
    return Chain.connect(settings, **overrides)


def default_state_path(settings: Settings | None = None) -> Path:
    """Where `ensure_contract` records the deployment by default: under VILLAGE_DATA_DIR."""
    return (settings or get_settings()).data_dir / "chain" / "trace_anchor.json"
