"""`village anchor`, `village verify`, `village proof`, `village evidence`, `village verify-bundle`."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import requests
import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session, select

from cli.registry import fail, registry_engine
from core.models import Farm
from core.settings import get_settings
from ledger import anchoring, bundle, bundle_verify, codes, verify
from ledger.chain import ChainError
from ledger.connect import anchoring_chain, influx_of, reading_chain
from ledger.models import Lot

console = Console()
STATUS_STYLE = {"verified": "green", "pending": "yellow", "tampered": "bold red", "unverifiable": "magenta"}


def _lot(session: Session, code: str) -> Lot:
    try:
        normalized = codes.normalize_code(code)
    except codes.TraceCodeError as e:
        fail(str(e), 2)
    lot = session.exec(select(Lot).where(Lot.code == normalized)).first()
    if lot is None:
        fail(f"no lot has the trace code {code!r}")
    return lot


def anchor(
    once: bool = typer.Option(False, "--once", help="Run one pass and exit (default: keep running)."),
    flush: bool = typer.Option(False, "--flush", help="Close a window now, whatever its size and age."),
) -> None:
    """Collect new trace records into windows and anchor their Merkle roots on chain."""
    settings = get_settings()
    engine = registry_engine()
    try:
        chain = anchoring_chain(settings)
    except ChainError as e:
        fail(f"cannot use the chain at {settings.chain_rpc_url}: {e}", 2)
    worker = anchoring.Anchorer(engine, settings, chain=chain, influx=influx_of(settings))
    console.print(f"anchoring to {chain.address} on chain {chain.chain_id} ({settings.chain_rpc_url})", highlight=False)

    def show(report: anchoring.PassReport) -> None:
        if report:
            states = {k: str(v) for k, v in report.states.items()} or "-"
            error = f"  [red]{report.chain_error}[/red]" if report.chain_error else ""
            console.print(
                f"leaves +{report.leaves}  windows {report.windows or '-'}  sent {report.sent or '-'}  "
                f"states {states}{error}",
                highlight=False,
            )
        if report.seal_wait_s:
            console.print(f"days sealed: digested in a pass {report.seal_wait_s:.0f} s from now", highlight=False)

    if once:
        show(worker.run_once(force_window=flush))
        with Session(engine) as session:
            console.print_json(data=anchoring.status(session))
        return
    stop = threading.Event()
    try:
        worker.run_forever(stop, on_pass=show)
    except KeyboardInterrupt:
        stop.set()


def verify_cmd(
    code: str = typer.Argument(..., help="The lot's trace code (or its Digital Link URI)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Recompute every record of a lot, check its proof and the root on chain (exit 3: tampered; 2: unverifiable)."""
    settings = get_settings()
    with Session(registry_engine()) as session:
        lot = _lot(session, _code_of(session, code))
        try:
            report = verify.verify_lot(session, lot, reading_chain(settings), influx_of(settings), settings)
        except ChainError as e:  # unreachable, or no TraceAnchor there (a reset chain): unverifiable, not tampered
            fail(f"cannot verify against the chain at {settings.chain_rpc_url}: {e}", 2)
    if as_json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=1))
    else:
        table = Table(title=f"{report.lot_code}  {report.lot_uri}  {report.status.upper()}")
        for col in ("record", "status", "window", "block", "anchored at", "why"):
            table.add_column(col)
        for c in report.records:
            table.add_row(
                f"{c.kind} #{c.record_id}",
                f"[{STATUS_STYLE[c.status]}]{c.status}[/]",
                f"{c.window or '-'} ({c.anchor_state})" if c.window else "-",
                str(c.block_number or "-"),
                c.anchored_at or "-",
                "; ".join(c.reasons),
            )
        console.print(table)
        console.print(f"{report.counts}", highlight=False)
        if report.reason:
            console.print(f"[{STATUS_STYLE[report.status]}]{report.status}[/]: {report.reason}", highlight=False)
    if report.status == verify.TAMPERED:
        raise typer.Exit(3)
    if report.status == verify.UNVERIFIABLE:
        raise typer.Exit(2)


def _code_of(session: Session, text: str) -> str:
    """A trace code from a code or a Digital Link URI."""
    if "/" not in text:
        return text
    try:
        parsed = codes.parse_uri(text)
    except codes.DigitalLinkError as e:
        fail(str(e), 2)
    if isinstance(parsed, str):
        return parsed
    from ledger.models import Product

    gtin, lot_no = parsed
    lot = session.exec(select(Lot).join(Product).where(Product.gtin == gtin, Lot.lot_no == lot_no)).first()
    if lot is None:
        fail(f"no lot {lot_no!r} of GTIN {gtin}")
    return lot.code


def proof(
    code: str = typer.Argument(..., help="The lot's trace code."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the bundle here (default: stdout)."),
) -> None:
    """Write the lot's proof bundle: records, leaves, proofs, roots and transactions."""
    settings = get_settings()
    with Session(registry_engine()) as session:
        lot = _lot(session, _code_of(session, code))
        data = bundle.lot_bundle(session, lot, reading_chain(settings), influx_of(settings), settings)
    _write(data, output)


def evidence(
    farm: str = typer.Option(..., "--farm", help="The farm or cooperative's registry code."),
    season: int = typer.Option(..., "--season", help="Harvest year."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the bundle here (default: stdout)."),
) -> None:
    """A cooperative's season as a production record with proofs, for a bank or insurer."""
    settings = get_settings()
    with Session(registry_engine()) as session:
        row = session.exec(select(Farm).where(Farm.code == farm)).first()
        if row is None:
            fail(f"no farm has the code {farm!r}")
        data = bundle.production_bundle(session, row, season, reading_chain(settings), influx_of(settings), settings)
    if not data["records"] and not data["pending"]:
        fail(f"farm {farm} has no lots harvested in {season}")
    _write(data, output)


def _write(data: dict, output: Path | None) -> None:
    text = json.dumps(data, ensure_ascii=False, indent=1)
    if output is None:
        print(text)
    else:
        output.write_text(text, encoding="utf-8")
        Console(stderr=True).print(f"wrote {output} ({len(data['records'])} records with proofs)", highlight=False)


def verify_bundle_cmd(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="A proof bundle (JSON)."),
    rpc: str = typer.Option(
        None, "--rpc", help="Any Ethereum RPC endpoint of the county's chain (default CHAIN_RPC_URL)."
    ),
    chain_id: int | None = typer.Option(
        None, "--chain-id", help="The county's chain id (default CHAIN_ID); never taken from the bundle."
    ),
    contract: str | None = typer.Option(
        None,
        "--contract",
        help="The county's TraceAnchor (default CHAIN_CONTRACT_ADDRESS); never from the bundle.",
    ),
) -> None:
    """Check a proof bundle with only an Ethereum RPC endpoint, against the chain and contract you trust."""
    settings = get_settings()
    chain_id = chain_id if chain_id is not None else settings.chain_id
    contract = contract or settings.chain_contract_address or None
    try:
        data = bundle_verify.load(str(path))
    except (OSError, ValueError) as e:
        fail(f"{path}: not a proof bundle: {e}", 2)
    if data.get("format") != bundle.FORMAT:
        fail(f"{path}: format {data.get('format')!r}, expected {bundle.FORMAT!r}", 2)
    url = rpc or settings.chain_rpc_url
    try:
        result = bundle_verify.verify_bundle(data, url, chain_id=chain_id, contract=contract)
    except bundle_verify.VerifierConfigError as e:
        fail(f"pass --chain-id and --contract (or set CHAIN_ID and CHAIN_CONTRACT_ADDRESS): {e}", 2)
    except (requests.RequestException, ConnectionError) as e:
        fail(f"cannot reach the chain at {url}: {e}", 2)
    for r in result.records:
        mark = "[green]ok[/]" if r.ok else "[bold red]FAILED[/]"
        console.print(f"{mark} {r.kind} window {r.window} block {r.block_number} {'; '.join(r.problems + r.notes)}")
    for m in result.manifests:
        if m.newest_in_bundle:
            later = "unknown" if m.later_windows is None else str(m.later_windows)
            newest = "the contract's last window" if m.provably_newest else f"{later} window(s) anchored since"
            console.print(
                f"manifest of {m.lot}: {m.listed - len(m.missing)}/{m.listed} records present, "
                f"anchored in block {m.block_number} ({newest})",
                highlight=False,
            )
    for problem in result.problems:
        console.print(f"[bold red]FAILED[/] {problem}", highlight=False)
    if result.unproven:
        console.print(f"not covered by anchored records: {', '.join(result.unproven)}", highlight=False)
    console.print(
        f"{sum(r.ok for r in result.records)}/{len(result.records)} records proven on chain {result.chain_id} "
        f"at {result.contract}; {result.pending} pending (not provable yet); "
        + ("bundle VERIFIED" if result.ok else "bundle FAILED"),
        highlight=False,
    )
    if not result.ok:
        raise typer.Exit(3)


def devnet(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 in a container)."),
    port: int = typer.Option(8545, help="JSON-RPC port."),
    chain_id: int = typer.Option(31337, "--chain-id", help="Chain id of the devnet."),
    state: Path | None = typer.Option(None, "--state", help="Keep the chain in this file across restarts."),
    block_time: float = typer.Option(
        2.0,
        "--block-time",
        min=0,
        help="Seconds between blocks, as on a real chain, so that anchors are confirmed and become final "
        "without other traffic; 0: each transaction mined at once in its own block, and no other blocks.",
    ),
) -> None:
    """Run a local Ethereum devnet (anvil) in the foreground: for demos and tests, not production."""
    import os

    from core.services import ServiceError, find_anvil

    try:
        binary = find_anvil()
    except ServiceError as e:
        fail(str(e), 2)
    argv = [binary, "--host", host, "--port", str(port), "--chain-id", str(chain_id)]
    if block_time > 0:
        argv += ["--block-time", f"{block_time:g}"]
    if state is not None:
        state.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--state", str(state), "--state-interval", "30"]
    os.execv(binary, argv)  # anvil replaces this process, so signals reach it directly
