"""`village demo` and `village up`: the whole local stack on this machine.

Both start mosquitto, InfluxDB and the ingest service on 127.0.0.1, load the demo county
(Panshan County, Panjin) into the registry, provision its devices (their secrets go to
the devices' own credentials file; the registry keeps only hashes) and run the
simulators against the broker. `demo` runs for a short while, prints what arrived and
stops; `up` keeps everything running with a live view until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

import httpx
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from sqlmodel import Session, col, select

from core import boundaries
from core.catalogue import get_catalogue
from core.db import get_engine
from core.localstack import LocalStack
from core.models import Device, Village
from core.provisioning import provision, write_credentials
from core.registry_io import load_demo
from core.services import free_port, wait_for_port
from core.settings import get_settings
from ingest.summary import rejected_by_reason, stored_by_kind_and_village
from ledger import anchoring
from ledger.anchor_models import ON_CHAIN, AnchorWindow
from ledger.anchoring import Anchorer
from ledger.codes import format_code, lot_uri, qr_terminal
from ledger.connect import anchoring_chain
from ledger.models import Lot, LotSource
from ledger.trace_io import load_demo_trace
from ledger.verify import verify_lot
from simulators.backfill import BackfillResult, backfill
from simulators.faults import FaultRates
from simulators.runner import load_credentials, run_in_background

console = Console()

DEMO_BLOCK_S = 2.0  # the demo chain's block time (anvil --block-time), as `village devnet`'s default
DEMO_FAULTS = FaultRates(duplicate=0.01, out_of_order=0.01, offline=0.01, malformed=0.005, out_of_range=0.005)


def _port_or_free(port: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            return free_port()


def _start(
    root: Path, fresh: bool, mqtt_port: int | None, influx_port: int | None, chain_port: int | None = None
) -> tuple[LocalStack, int]:
    if fresh and root.exists():
        shutil.rmtree(root)
    metrics_port = free_port()
    stack = LocalStack(root, extra_env={"INGEST_METRICS_PORT": str(metrics_port)})
    with console.status("starting mosquitto, InfluxDB and anvil..."):
        # blocks every DEMO_BLOCK_S, as on a chain (and `village devnet`): anchors get confirmed, then final
        stack.start(
            mqtt_port=mqtt_port, influx_port=influx_port, chain=True, chain_port=chain_port, chain_block_s=DEMO_BLOCK_S
        )
    engine = get_engine(stack.database_url)
    with Session(engine) as session:
        result = load_demo(session)
        trace = load_demo_trace(session)
        boundaries.load_demo(session)  # the dashboard map's outlines
        session.commit()
        unprovisioned = [d for d in session.exec(select(Device)) if not d.secret_hash]
        issued = [(d.id, d.kind, provision(session, d.id)) for d in unprovisioned]
        session.commit()
    if issued:
        write_credentials(stack.credentials_file, issued)
    stack.sync_broker()
    console.print(
        f"registry: demo county loaded ({sum(result.created.values())} new rows, "
        f"{sum(trace.created.values())} new trace rows), "
        f"{len(issued)} devices provisioned; device secrets in {stack.credentials_file}"
    )
    (ingest,) = stack.start_ingest(1)
    # a busy machine can take tens of seconds to start a Python process: wait while it lives
    deadline = time.monotonic() + 180
    with console.status("waiting for ingest to subscribe..."):
        while time.monotonic() < deadline and ingest.poll() is None and not _subscribed(metrics_port):
            time.sleep(0.1)
    if not _subscribed(metrics_port):
        why = "exited" if ingest.poll() is not None else "did not subscribe within 180 s"
        raise typer.Exit(_fail(f"ingest {why}; see {root / 'ingest.log'}"))
    return stack, metrics_port


def _subscribed(metrics_port: int) -> bool:
    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).text
    except httpx.HTTPError:
        return False
    return "village_ingest_subscribed 1.0" in text


def _fail(message: str) -> int:
    console.print(f"[red]error:[/red] {message}")
    return 1


def _village_names(stack: LocalStack) -> dict[str, str]:
    with Session(get_engine(stack.database_url)) as session:
        return {v.code: v.name_zh for v in session.exec(select(Village))}


def _arrivals(stack: LocalStack) -> Table:
    with stack.influx() as influx:
        stored = stored_by_kind_and_village(influx, get_catalogue())
    names = _village_names(stack)
    table = Table(title="readings stored in InfluxDB, per device kind and village")
    table.add_column("kind")
    table.add_column("village")
    table.add_column("readings", justify="right")
    for (kind, village), n in sorted(stored.items()):
        table.add_row(kind, f"{names.get(village, '?')} {village}", f"{n:,}")
    table.caption = f"total {sum(stored.values()):,}"
    return table


def _rejections(stack: LocalStack) -> Table:
    table = Table(title="readings rejected (dead letters), by reason")
    table.add_column("reason")
    table.add_column("count", justify="right")
    rejected = rejected_by_reason(get_engine(stack.database_url))
    for reason, n in sorted(rejected.items(), key=lambda kv: -kv[1]):
        table.add_row(reason, str(n))
    table.caption = "details: village deadletters list" if rejected else "none"
    return table


def _windows(stack: LocalStack) -> Table:
    with Session(get_engine(stack.database_url)) as session:
        status = anchoring.status(session)
    table = Table(title="anchoring windows (latest first)")
    for col_name in ("window", "state", "leaves", "block", "anchored at", "transaction"):
        table.add_column(col_name)
    for w in status["latest"]:
        table.add_row(
            w["window"], w["state"], str(w["leaves"]), str(w["block"] or "-"), w["anchored_at"] or "-", w["tx"] or "-"
        )
    table.caption = f"leaves waiting for a window: {status['leaves_waiting']}"
    return table


def _endpoints(stack: LocalStack, metrics_port: int) -> Panel:
    assert stack.mosquitto and stack.influxd
    lines = [
        f"MQTT broker     mqtt://{stack.mosquitto.host}:{stack.mosquitto.port}  (devices: v1/devices/<id>/telemetry)",
        f"InfluxDB        {stack.influxd.url}  (database '{stack.influx_db}', v1 API /write and /query)",
        f"ingest metrics  http://127.0.0.1:{metrics_port}/metrics",
        f"registry        {stack.database_url}",
        f"chain (anvil)   {stack.anvil.url if stack.anvil else '-'}  (TraceAnchor deployed by the anchoring worker)",
        f"data folder     {stack.root}  (logs: ingest.log, anchor.log, mosquitto/, influxdb/, anvil/)",
        "",
        "point the CLI at this stack:  "
        + " ".join(
            f"{k}={v}" for k, v in stack.env().items() if k in ("VILLAGE_DATA_DIR", "INFLUX_URL", "CHAIN_RPC_URL")
        ),
    ]
    return Panel("\n".join(lines), title="where the services listen")


def _ingested_messages(metrics_port: int) -> float:
    """Messages ingest has taken from the broker so far (its Prometheus counter), or -1 when unreadable."""
    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return -1
    found = re.search(r"^village_ingest_messages_total ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else -1


def _settle(stack: LocalStack, metrics_port: int, messages: int, seconds: float = 180) -> None:
    """Wait until ingest has taken every message the broker acknowledged (its counter) and InfluxDB's
    count of stored readings has stopped growing (two equal counts in a row). A loaded machine only
    makes this take longer; it does not make the demo print a half-stored count."""
    deadline = time.monotonic() + seconds
    while _ingested_messages(metrics_port) < messages and time.monotonic() < deadline:
        time.sleep(0.5)
    with stack.influx() as influx:
        catalogue = get_catalogue()
        last = -1
        while time.monotonic() < deadline:
            total = sum(stored_by_kind_and_village(influx, catalogue).values())
            if total == last:
                return
            last = total
            time.sleep(1.5)


DEMO_BAG = "M35CW3XRD6R"  # 5 kg bags of Panjin rice from the demo season (ledger/data/demo_trace.yaml)
SEASON = ("2026-04-10", "2026-10-12")  # the demo season's sensor history, sent as offline backfill


def _season_backfill(stack: LocalStack) -> BackfillResult:
    """The demo plots' devices send the 2026 season they 'buffered', as arrays over MQTT."""
    creds = {c.id: c for c in load_credentials(stack.credentials_file)}
    with Session(get_engine(stack.database_url)) as session:
        plots = select(LotSource.plot_id).where(col(LotSource.plot_id).is_not(None))
        ids = session.exec(select(Device.id).where(col(Device.plot_id).in_(plots))).all()
    zone = ZoneInfo("Asia/Shanghai")
    start, end = (int(datetime.fromisoformat(d).replace(tzinfo=zone).timestamp() * 1000) for d in SEASON)
    assert stack.mosquitto
    return backfill(
        [creds[i] for i in sorted(ids) if i in creds], stack.mosquitto.host, stack.mosquitto.port, start, end
    )


def _anchor_and_verify(stack: LocalStack, base_url: str) -> Panel:
    """Anchor everything recorded so far (one pass per window), then verify a demo bag."""
    settings = stack.settings()
    engine = get_engine(stack.database_url)
    chain = anchoring_chain(settings)
    with stack.influx() as influx:
        worker = Anchorer(engine, settings, chain=chain, influx=influx)
        report = worker.run_once(force_window=True)
        if report.seal_wait_s:  # days just sealed: digest them once every ingest replica keeps them apart
            time.sleep(report.seal_wait_s)
            sealing, report = report, worker.run_once(force_window=True)
            report.leaves += sealing.leaves
            report.derived = {k: sealing.derived.get(k, 0) + v for k, v in report.derived.items()}
        for _ in range(10):
            with Session(engine) as session:
                if not session.exec(select(AnchorWindow).where(col(AnchorWindow.state).not_in(list(ON_CHAIN)))).first():
                    break
            worker.run_once()
        with Session(engine) as session:
            lot = session.exec(select(Lot).where(Lot.code == DEMO_BAG)).one()
            v = verify_lot(session, lot, chain, influx, settings)
            status = anchoring.status(session)
            uri = lot_uri(base_url, lot)
    windows = ", ".join(f"{k} {n}" for k, n in status["windows"].items())
    lines = [
        f"chain {chain.chain_id} at {settings.chain_rpc_url}, TraceAnchor {chain.address}",
        f"telemetry records derived: {report.derived}; leaves anchored: {report.leaves}; windows: {windows}",
        f"demo bag {format_code(lot.code)}: [bold]{v.status}[/bold] "
        f"({v.counts['verified']} records verified, {v.counts['pending']} pending, {v.counts['tampered']} tampered)",
        f"trace URI {uri}",
        "check it yourself: village verify "
        + format_code(lot.code)
        + "   |   village proof "
        + format_code(lot.code)
        + " -o bundle.json && village verify-bundle bundle.json"
        + f" --chain-id {chain.chain_id} --contract {chain.address}",
        "",
        qr_terminal(uri),
    ]
    return Panel("\n".join(lines), title="traceability ledger")


def demo(
    duration: float = typer.Option(40.0, min=5, help="Seconds the simulated devices run."),
    speed: float = typer.Option(720.0, min=1, help="Simulated seconds per real second (720: 8 hours in 40 s)."),
    seed: int = typer.Option(42, help="Simulator seed; the same seed sends the same readings."),
    keep: bool = typer.Option(False, help="Keep the previous demo's data instead of starting fresh."),
) -> None:
    """Run the demo county for a short while and print what arrived (readings, rejections, endpoints)."""
    settings = get_settings()
    root = settings.data_dir / "demo"
    stack, metrics_port = _start(root, fresh=not keep, mqtt_port=None, influx_port=None)
    try:
        with console.status(f"backfilling the demo plots' sensor history {SEASON[0]} to {SEASON[1]} over MQTT..."):
            filled = _season_backfill(stack)
        console.print(
            f"backfill: {filled.devices} devices sent {filled.readings:,} buffered readings"
            f" in {filled.messages:,} arrays"
        )
        thread, stop, report = run_in_background(
            credentials=stack.credentials_file,
            host=stack.mosquitto.host,
            port=stack.mosquitto.port,  # type: ignore[union-attr]
            duration=duration,
            seed=seed,
            speed=speed,
            rates=DEMO_FAULTS,
            unknown_devices=2,
        )
        with Live(console=console, refresh_per_second=1, transient=True) as live:
            start = time.monotonic()
            while thread.is_alive():
                live.update(
                    Group(
                        f"simulating {duration:.0f} s at x{speed:g} ({time.monotonic() - start:.0f} s)...",
                        _arrivals(stack),
                    )
                )
                thread.join(2)
        stop.set()
        sim = report[0] if report else None
        with console.status("letting ingest store the last readings..."):
            _settle(stack, metrics_port, filled.messages + (sim.acked if sim else 0))
        console.print(_arrivals(stack))
        console.print(_rejections(stack))
        if sim is not None:
            console.print(
                f"simulator: {sim.devices} devices, {sim.published:,} messages published, {sim.acked:,} acknowledged "
                f"by the broker, {sim.readings:,} readings; {sim.unknown_refused} of {sim.unknown_devices} "
                f"unknown devices refused by the broker; faults injected: {sim.by_fault}"
            )
        with console.status("anchoring the trace records and telemetry digests on the local chain..."):
            api_port = free_port()
            base_url = f"http://127.0.0.1:{api_port}"
            ledger_panel = _anchor_and_verify(stack, base_url)
        with console.status("loading two more counties (illustrative) for the province's comparison..."):
            console.print(_province(stack))
        with console.status("rolling up the season in InfluxDB and computing the county indicators..."):
            indicators = _indicators(stack)
        with console.status("starting the API and the pages..."):
            api = _serve(stack, api_port, base_url)
        console.print(ledger_panel)
        console.print(indicators)
        console.print(api)
        console.print(_endpoints(stack, metrics_port))
        if sys.stdin.isatty():
            console.print("the API keeps running for you: press [bold]Enter[/bold] (or Ctrl-C) to stop everything.")
            with contextlib.suppress(KeyboardInterrupt, EOFError):
                input()
        console.print("run [bold]village up[/bold] to keep the stack running with a live view.")
    finally:
        stack.stop()


def _indicators(stack: LocalStack) -> Table:
    """The demo season's rollups, then a few of the county's indicators for 2026-Q3."""
    from analytics.compute import compute_indicators
    from analytics.periods import parse_period
    from analytics.rollups import from_settings as rollups_from_settings

    settings = stack.settings()
    rollups = rollups_from_settings(settings)
    start = datetime.fromisoformat(SEASON[0]).date()
    rollups.backfill(since=start, until=datetime.fromisoformat(SEASON[1]).date())
    with stack.influx() as influx, Session(get_engine(stack.database_url)) as session:
        today = datetime.now(ZoneInfo(settings.county_timezone)).date()
        label = f"{today.year}-Q{(today.month - 1) // 3 + 1}"  # this quarter: the devices exist, records anchored
        period = parse_period(label, settings.county_timezone)
        report = compute_indicators(session, influx, "211122", period, rollups=rollups)
        rows = [r for r in report.rows() if r["value"] is not None]
    table = Table(title=f"Panshan County 盘山县, {label}: indicators computed from the demo (village indicators)")
    for col_name in ("indicator", "名称", "value", "unit"):
        table.add_column(col_name, justify="right" if col_name == "value" else "left")
    for r in rows[:12]:
        value = r["value"]
        table.add_row(
            r["name_en"], r["name_zh"], f"{value:,.2f}" if isinstance(value, float) else str(value), r["unit"]
        )
    table.caption = (
        f"{len(rows)} indicators with a value; all of them: village indicators --county 211122 --period 2026-Q3"
    )
    return table


def _province(stack: LocalStack) -> str:
    """Dawa and Heishan (synthetic, core/data/demo_province.yaml) with a quarter of readings, the county
    statistics; the demo county's devices dated from the season they backfilled (api/province_demo.py)."""
    from api import province_demo

    engine = get_engine(stack.database_url)
    season_start = datetime.fromisoformat(SEASON[0]).replace(tzinfo=ZoneInfo("Asia/Shanghai"))
    with Session(engine) as session:
        province_demo.load(session, installed={"211122": season_start})
        session.commit()
    with stack.influx() as influx:
        written = province_demo.write_readings(engine, influx)
    return (
        f"province: Dawa 211104 and Heishan 210726 loaded (synthetic, illustrative), {written:,} readings "
        f"written for {province_demo.PERIOD}; county statistics imported (illustrative)"
    )


def _serve(stack: LocalStack, port: int, base_url: str) -> Panel:
    """`village serve` on this stack, with one demo user per role."""
    from api.demo import ensure_demo_users

    with Session(get_engine(stack.database_url)) as session:
        passwords = ensure_demo_users(session)
        session.commit()
    proc = stack._spawn(
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-log"],
        stack.root / "api.log",
        {"TRACE_BASE_URL": base_url},  # the signing secret is made under the stack's data dir
    )
    stack.ingest_procs.append(proc)  # stopped with the stack
    wait_for_port("127.0.0.1", port, 60, proc)
    lines = [
        f"dashboard   {base_url}/dashboard   (demo login: county / {passwords['county']}; also shaling,"
        " beizhengjia, analyst: one per role)",
        f"province    {base_url}/province?period=2026-Q3   (province login: liaoning / {passwords['liaoning']};"
        " city of Panjin: panjin, same password; counties compared side by side)",
        f"trace page  {base_url}/01/06947512300010/10/2026-M01-A   (or {base_url}/t/M35CW3XRD6R)",
        f"trace JSON  {base_url}/api/v1/trace/M35CW3XRD6R   (/verify, /proof, /epcis, /qr.svg)",
        f"API docs    {base_url}/api/v1/docs",
    ]
    return Panel("\n".join(lines), title="API and pages (village serve)")


def up(
    speed: float = typer.Option(
        1.0, min=1, help="Simulated seconds per real second (above 1 the devices run ahead of the clock: rejected)."
    ),
    simulate: bool = typer.Option(True, help="Run the demo county's simulated devices."),
    seed: int = typer.Option(42, help="Simulator seed."),
) -> None:
    """Run the local stack (broker, InfluxDB, ingest, simulators) with a live view until Ctrl-C."""
    settings = get_settings()
    influx_port = urlparse(settings.influx_url).port or 8086
    stack, metrics_port = _start(
        settings.data_dir / "stack",
        fresh=False,
        mqtt_port=_port_or_free(settings.mqtt_port),
        influx_port=_port_or_free(influx_port),
        chain_port=_port_or_free(urlparse(settings.chain_rpc_url).port or 8545),
    )
    stop_all = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_all.set())
    console.print(_endpoints(stack, metrics_port))
    sim = None
    try:
        marker = stack.root / "season-backfilled"
        if not marker.exists():  # first start: the demo plots' season history, as in `village demo`
            with console.status(f"backfilling the demo plots' sensor history {SEASON[0]} to {SEASON[1]}..."):
                _season_backfill(stack)
            marker.touch()
        stack.start_anchor(ANCHOR_WINDOW_SECONDS="10")
        if simulate:
            sim = run_in_background(
                credentials=stack.credentials_file,
                host=stack.mosquitto.host,  # type: ignore[union-attr]
                port=stack.mosquitto.port,
                duration=None,
                seed=seed,
                speed=speed,  # type: ignore[union-attr]
                rates=DEMO_FAULTS,
            )
        with Live(console=console, refresh_per_second=1) as live:
            while not stop_all.is_set():
                live.update(
                    Group(
                        _endpoints(stack, metrics_port),
                        _arrivals(stack),
                        _rejections(stack),
                        _windows(stack),
                        "Ctrl-C stops everything",
                    )
                )
                if any(p.poll() is not None for p in stack.ingest_procs):
                    raise typer.Exit(_fail(f"ingest exited; see {stack.root / 'ingest.log'}"))
                if any(p.poll() is not None for p in stack.anchor_procs):
                    raise typer.Exit(_fail(f"the anchoring worker exited; see {stack.root / 'anchor.log'}"))
                stop_all.wait(2)
    except KeyboardInterrupt:
        pass
    finally:
        if sim is not None:
            sim[1].set()
            sim[0].join(10)
        stack.stop()
        console.print("stopped; data kept in " + str(stack.root))
