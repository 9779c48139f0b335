"""`village ingest`: run the ingest service (one or several replicas on the shared subscription)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import typer

from core.db import migrate
from core.log import get_logger, setup_logging
from core.services import die_with_parent
from core.settings import get_settings


def ingest(
    replicas: int = typer.Option(
        1, min=1, max=64, help="Replicas to run, each its own process, restarted with backoff when it exits."
    ),
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


#: A replica that exits is started again after this wait, doubled per quick exit up to the maximum;
#: one that ran RESTART_RESET_S resets the wait.
RESTART_FIRST_S, RESTART_MAX_S, RESTART_RESET_S = 1.0, 30.0, 60.0


def _replica_setup(supervisor: int) -> Callable[[], None]:
    """preexec_fn of a replica: it gets SIGTERM when the supervisor dies, however it dies (SIGKILL
    too: Linux PR_SET_PDEATHSIG), and stops at once if the supervisor died before that was set."""

    def setup() -> None:
        die_with_parent()
        if os.getppid() != supervisor:
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


def _supervise(replicas: int) -> int:
    """Run replicas 0..N-1 as child processes and keep them running: a replica that exits is started
    again with backoff while the others go on. SIGTERM/SIGINT stop them all; the replicas also stop
    when the supervisor is killed, so none is left behind to hold its broker account and spool."""
    log = get_logger("ingest")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    me = os.getpid()

    def start(i: int) -> subprocess.Popen:
        argv = [sys.executable, "-m", "cli.main", "ingest", "--replica", str(i)]
        return subprocess.Popen(argv, env=os.environ.copy(), preexec_fn=_replica_setup(me))

    children = {i: start(i) for i in range(replicas)}
    started = dict.fromkeys(children, time.monotonic())
    waits = dict.fromkeys(children, RESTART_FIRST_S)
    due: dict[int, float] = {}  # replicas waiting to be started again, and when
    log.info("replicas started", replicas=replicas, pids=[c.pid for c in children.values()])
    while not stop.wait(0.2):
        now = time.monotonic()
        for i, child in children.items():
            code = child.poll()
            if code is None or i in due:
                continue
            if now - started[i] >= RESTART_RESET_S:
                waits[i] = RESTART_FIRST_S
            due[i] = now + waits[i]
            log.error("replica exited; starting it again", replica=i, pid=child.pid, code=code, retry_s=waits[i])
            waits[i] = min(waits[i] * 2, RESTART_MAX_S)
        for i, when in list(due.items()):
            if now >= when:
                del due[i]
                children[i], started[i] = start(i), now
                log.info("replica started again", replica=i, pid=children[i].pid)
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    for child in children.values():
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0
