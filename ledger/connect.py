"""Opening the chain and InfluxDB as configured, for the worker, the CLI and the API."""

from __future__ import annotations

import json

from core.influx import InfluxV1
from core.settings import Settings
from ledger.chain import Chain, Deployment, default_state_path


def anchoring_chain(settings: Settings) -> Chain:
    """The chain with the anchoring key and a TraceAnchor (deployed on first use, then reused)."""
    chain = Chain.connect(settings)
    chain.ensure_contract(default_state_path(settings))
    return chain


def reading_chain(settings: Settings) -> Chain | None:
    """A read-only connection (no key) to the configured or recorded TraceAnchor; None if there is none."""
    address = settings.chain_contract_address
    state = default_state_path(settings)
    if not address and state.exists():
        address = Deployment(**json.loads(state.read_text())).address
    if not address:
        return None
    return Chain.connect(settings, private_key="", contract_address=address)


def influx_of(settings: Settings) -> InfluxV1:
    return InfluxV1.from_settings(settings)
