"""`village ingest --replicas N`: a replica that dies comes back while the others go on; none outlives
its supervisor; each replica logs the moment its subscription is granted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from core.localstack import LocalStack
from core.services import free_ports
from tests.conftest import DeviceClient, now_ms, wait_until
from tests.faults import log_events, metric


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _supervisor(stack: LocalStack, replicas: int) -> tuple[subprocess.Popen, Path, int]:
    log = stack.root / "supervisor.log"
    base = free_ports(replicas)
    env = {"INGEST_METRICS_PORT": str(base), "LOG_FORMAT": "json"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "ingest", "--replicas", str(replicas)],
            env={**os.environ, **stack.env(), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    stack.ingest_procs.append(proc)
    return proc, log, base


def _granted(log: Path) -> list[str]:
    return [e["client_id"] for e in log_events(log) if e.get("event") == "subscription granted"]


def _pids(log: Path) -> dict[int, int]:
    """Replica index to the pid the supervisor started it as last."""
    pids: dict[int, int] = {}
    for e in log_events(log):
        if e.get("event") == "replicas started":
            pids.update(enumerate(e["pids"]))
        elif e.get("event") == "replica started again":
            pids[e["replica"]] = e["pid"]
    return pids


def test_fault_replica_killed_is_restarted_and_the_others_never_stop(stack: LocalStack) -> None:
    supervisor, log, base = _supervisor(stack, 2)
    assert wait_until(lambda: sorted(_granted(log)) == ["ingest-0", "ingest-1"], 90), log.read_text()[-3000:]
    before = _pids(log)
    os.kill(before[0], signal.SIGKILL)
    assert wait_until(lambda: _pids(log).get(0, before[0]) != before[0], 30), "replica 0 was not started again"
    assert wait_until(lambda: _granted(log).count("ingest-0") == 2, 60)  # subscribed again: a line says so
    assert supervisor.poll() is None and _alive(before[1]) and _pids(log)[1] == before[1]  # never stopped
    exited = [e for e in log_events(log) if e.get("event") == "replica exited; starting it again"]
    assert [(e["replica"], e["code"]) for e in exited] == [(0, -signal.SIGKILL)]
    # both replicas take readings again
    soil = DeviceClient(stack, "soil-0001")
    t0 = now_ms() - 60_000
    for n in range(0, 200, 20):
        soil.send([{"ts": t0 + i, "values": {"soil_moisture": 30.0}} for i in range(n, n + 20)])
    with stack.influx() as influx:
        assert wait_until(lambda: influx.count("soil", "soil_moisture") == 200, 60)
    stored = [metric(base + i, "village_ingest_readings_stored_total") for i in range(2)]
    assert all(s > 0 for s in stored), stored
    supervisor.terminate()
    assert supervisor.wait(60) == 0
    assert not _alive(before[1]) and not _alive(_pids(log)[0])


def test_fault_supervisor_sigkilled_leaves_no_replica(stack: LocalStack) -> None:
    supervisor, log, _ = _supervisor(stack, 2)
    assert wait_until(lambda: sorted(_granted(log)) == ["ingest-0", "ingest-1"], 90), log.read_text()[-3000:]
    pids = list(_pids(log).values())
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait()
    try:
        assert wait_until(lambda: not any(_alive(p) for p in pids), 30), "replicas outlived their supervisor"
    finally:
        for p in pids:  # leave nothing behind even when the test fails
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    time.sleep(0.1)
