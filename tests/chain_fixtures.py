"""Chain fixtures: a real anvil (from node_modules) on a free port, and a Chain with TraceAnchor deployed.

A missing anvil fails with its install hint (run `make deps`); nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.services import ANVIL_DEV_KEY, Anvil
from core.services import anvil as make_anvil
from core.settings import Settings
from ledger.chain import Chain

# anvil's second default account: a key that does not own the contract.
OTHER_DEV_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


def chain_settings(anvil: Anvil, **extra: object) -> Settings:
    # No ingest runs beside these tests' anchoring workers (readings are written directly, before a
    # pass), so nothing can be in flight when a day is sealed: digest it in the same pass.
    extra.setdefault("ANCHOR_SEAL_WAIT_S", 0)
    return Settings(_env_file=None, CHAIN_RPC_URL=anvil.url, CHAIN_TIMEOUT_S=5, **extra)  # type: ignore[call-arg]


@pytest.fixture
def anvil(tmp_path: Path) -> Iterator[Anvil]:
    """anvil with its state in tmp_path (restartable with the same chain); finalized = head - 2."""
    node = make_anvil(tmp_path / "anvil", state_file=tmp_path / "anvil" / "state.json", slots_in_an_epoch=1)
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def chain(anvil: Anvil, tmp_path: Path) -> Chain:
    """Chain connected with anvil's first dev key (the owner) and a freshly deployed TraceAnchor."""
    c = Chain.connect(chain_settings(anvil), private_key=ANVIL_DEV_KEY)
    c.ensure_contract(tmp_path / "trace_anchor.json")
    return c
