"""The anvil/hardhat development keys are published: anchoring with one on a real chain would let
anyone anchor as us. They are refused on every chain id but the devnet's (31337), against a real
anvil started with a public chain's id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from typer.testing import CliRunner

from cli.main import app
from core.services import ANVIL_DEV_KEY, Anvil
from core.services import anvil as make_anvil
from core.settings import Settings, get_settings
from ledger.chain import DEV_ACCOUNTS, DEV_CHAIN_ID, Chain, DevKeyRefused
from ledger.connect import anchoring_chain
from tests.chain_fixtures import OTHER_DEV_KEY, chain_settings

SEPOLIA = 11155111


@pytest.fixture
def public_chain(tmp_path: Path) -> Iterator[Anvil]:
    """anvil pretending to be a public chain (Sepolia's chain id)."""
    node = make_anvil(tmp_path / "anvil", chain_id=SEPOLIA)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def test_dev_accounts_are_those_of_the_public_mnemonic() -> None:
    Account.enable_unaudited_hdwallet_features()
    mnemonic = "test test test test test test test test test test test junk"
    derived = {Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}").address for i in range(20)}
    assert derived == DEV_ACCOUNTS
    assert Account.from_key(ANVIL_DEV_KEY).address in DEV_ACCOUNTS


def test_attack_anvil_key_on_public_chain(public_chain: Anvil, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings = chain_settings(public_chain)
    for key in (ANVIL_DEV_KEY, OTHER_DEV_KEY):
        with pytest.raises(DevKeyRefused, match=f"refused on chain {SEPOLIA}"):
            Chain.connect(settings, private_key=key)
    # As deployed: the key in a secret file, the worker's own entry point.
    key_file = tmp_path / "chain_private_key"
    key_file.write_text(ANVIL_DEV_KEY + "\n")
    file_settings = chain_settings(public_chain, CHAIN_PRIVATE_KEY_FILE=str(key_file), VILLAGE_DATA_DIR=str(tmp_path))
    with pytest.raises(DevKeyRefused, match="public development key"):
        anchoring_chain(file_settings)
    # With CHAIN_ID set, refused before the node is even asked (here: no node at that address).
    offline = Settings(_env_file=None, CHAIN_ID=1, CHAIN_RPC_URL="http://127.0.0.1:9")  # type: ignore[call-arg]
    with pytest.raises(DevKeyRefused, match="refused on chain 1 "):
        Chain.connect(offline, private_key=ANVIL_DEV_KEY)
    # The worker's CLI says why and exits.
    monkeypatch.setenv("CHAIN_RPC_URL", public_chain.url)
    monkeypatch.setenv("CHAIN_PRIVATE_KEY_FILE", str(key_file))
    monkeypatch.setenv("VILLAGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'registry.db'}")
    for name in ("CHAIN_PRIVATE_KEY", "CHAIN_ID", "CHAIN_CONTRACT_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(app, ["anchor", "--once"], env={"COLUMNS": "300"})
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 2 and "public development key" in " ".join(out.output.split()), out.output
    assert ANVIL_DEV_KEY.removeprefix("0x") not in out.output  # the key itself is never shown

    # A key of our own works on that chain; a dev key still works on the devnet (tests/test_chain.py).
    own = Account.create()
    public_chain.rpc("anvil_setBalance", own.address, hex(10**18))
    mine = Chain.connect(settings, private_key=own.key.hex())
    assert mine.ensure_contract(tmp_path / "trace_anchor.json") and mine.chain_id == SEPOLIA
    assert DEV_CHAIN_ID == 31337
