"""`village ingest`: run the ingest service (one or several replicas on the shared subscription)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import typer

from core.db import migrate
from core.log import get_logger, setup_logging
from core.settings import get_settings


def ingest(
    replicas: int = typer.Option(1, min=1, max=64, help="Replicas to run, each its own process."),
    replica: int = typer.Option(0, min=0, help="Index i of this replica: account and client id ingest-<i>, spool."),
) -> None:
    """Consume device telemetry from MQTT, validate, enrich and store it in InfluxDB."""
    settings = get_settings()
    highest = max(replicas - 1, replica)
    if highest >= settings.ingest_max_replicas:
        typer.echo(
            f"error: replica {highest} has no broker account: `village broker sync` writes ingest-0.."
            f"ingest-{settings.ingest_max_replicas - 1}; raise INGEST_MAX_REPLICAS (for the sync and ingest)",
            err=True,
        )
        raise typer.Exit(2)
    setup_logging(settings.log_level, settings.log_format)
    if replicas > 1:
        raise typer.Exit(_supervise(replicas))
    from ingest.service import IngestService

    migrate(settings.resolved_database_url())
    service = IngestService(settings, replica)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.stop_event.set())
    port = settings.ingest_metrics_port + replica if settings.ingest_metrics_port else None
    service.run_forever(metrics_port=port)


def _supervise(replicas: int) -> int:
    """Run replicas 0..N-1 as child processes; stop them all on SIGTERM/SIGINT."""
    log = get_logger("ingest")
    children = [
        subprocess.Popen([sys.argv[0], "ingest", "--replica", str(i)], env=os.environ.copy()) for i in range(replicas)
    ]
    log.info("replicas started", replicas=replicas, pids=[c.pid for c in children])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        if any(c.poll() is not None for c in children):
            log.error("a replica exited", codes=[c.poll() for c in children])
            break
    for c in children:
        if c.poll() is None:
            c.terminate()
    return max(c.wait() for c in children)
