"""README "Nothing is lost", one test per promise, against real mosquitto, InfluxDB, PostgreSQL and ingest.

The proof that a replica acknowledged nothing it had not stored is the same each time: SIGKILL it
while it holds a batch (no chance to flush or acknowledge), bring the failed service back, start
the replica again on its persistent session, and count every reading in InfluxDB (and every
dead letter in the registry) exactly once.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from core.db import make_engine
from core.localstack import LocalStack
from core.models import DeadLetter, DeadLetterPayload, Device
from core.provisioning import provision
from core.registry_io import load_demo
from core.services import Postgres, free_port
from ingest.spool import Spool
from tests.conftest import DeviceClient, now_ms, wait_until
from tests.faults import log_events, metric, wait_subscribed

SPOOLED = "village_ingest_readings_spooled_total"


def _ingest(stack: LocalStack, **env: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    [proc] = stack.start_ingest(1, **{"INGEST_METRICS_PORT": str(port), "LOG_FORMAT": "json", **env})
    wait_subscribed(port)
    return proc, port


def _sigkill(stack: LocalStack, proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)  # no chance to flush or acknowledge
    proc.wait()
    stack.ingest_procs.remove(proc)


def _logged(stack: LocalStack, event: str) -> int:
    return sum(1 for e in log_events(stack.root / "ingest.log") if str(e.get("event", "")).startswith(event))


def _times(stack: LocalStack, measurement: str, field: str, device: str) -> list[int]:
    with stack.influx() as influx:
        series = influx.query(f'SELECT "{field}" FROM "{measurement}" WHERE device = \'{device}\'')
    return [row[0] for row in series[0]["values"]] if series else []


def test_fault_spool_full_stops_acks_the_broker_queues_nothing_lost(stack: LocalStack) -> None:
    proc, port = _ingest(stack, SPOOL_MAX_BYTES="4000", INGEST_BATCH_SIZE="10")
    assert stack.influxd
    stack.influxd.stop()
    soil = DeviceClient(stack, "soil-0001")
    t0 = now_ms() - 600_000
    total = 150
    for i in range(total):  # the broker acknowledges every one to the device
        assert soil.send([{"ts": t0 + i, "seq": i, "values": {"soil_moisture": 25.0}}]) == [0]
    assert wait_until(lambda: _logged(stack, "spool full; holding acknowledgements") > 0, 20)
    spooled = metric(port, SPOOLED)
    assert 0 < spooled < total  # the spool took what fits and no more
    spool = Spool(stack.root / "spool" / "ingest-0.sqlite", 4000)
    assert spool.size_bytes < 4000 + 10 * 200  # its limit and one batch of 10 readings
    spool.close()
    assert metric(port, "village_ingest_readings_stored_total") == 0
    _sigkill(stack, proc)  # what the spool did not take was never acknowledged: the broker still has it
    stack.influxd.start()
    _proc, port = _ingest(stack, SPOOL_MAX_BYTES="4000", INGEST_BATCH_SIZE="10")
    assert wait_until(lambda: len(_times(stack, "soil", "soil_moisture", "soil-0001")) == total, 60)
    assert sorted(_times(stack, "soil", "soil_moisture", "soil-0001")) == [t0 + i for i in range(total)]
    assert metric(port, "village_ingest_redelivered_messages_total") > 0


def test_fault_sigkill_mid_batch_redelivers_exactly_once(stack: LocalStack) -> None:
    proc, _ = _ingest(stack, INGEST_BATCH_MS="3000", INGEST_BATCH_SIZE="100000")
    soil = DeviceClient(stack, "soil-0002")
    t0 = now_ms() - 600_000
    soil.send([{"ts": t0 + i, "seq": i, "values": {"soil_moisture": 20.0}} for i in range(100)])
    assert wait_until(lambda: len(_times(stack, "soil", "soil_moisture", "soil-0002")) == 100, 30)
    soil.send([{"ts": t0 + i, "seq": i, "values": {"soil_moisture": 21.0}} for i in range(100, 300)])
    time.sleep(0.5)  # received by the replica, in a batch that waits 3 s to be written and acknowledged
    _sigkill(stack, proc)
    _proc, port = _ingest(stack)  # the same replica's persistent session: the broker sends them again
    assert wait_until(lambda: len(_times(stack, "soil", "soil_moisture", "soil-0002")) >= 300, 30)
    time.sleep(0.5)
    times = _times(stack, "soil", "soil_moisture", "soil-0002")
    assert sorted(times) == [t0 + i for i in range(300)]  # every reading, each once
    assert metric(port, "village_ingest_redelivered_messages_total") > 0


def test_fault_mosquitto_restarted_mid_stream_loses_nothing_acknowledged(stack: LocalStack) -> None:
    """mosquitto keeps the ingest session's queue across a restart (persistence file, persistent session).

    mosquitto 2.0 does not persist *shared* subscriptions: from its restart until the replicas have
    subscribed again, it answers a PUBLISH with PUBACK 16 "No matching subscribers" and drops it. Such a
    reading was never accepted, and the device (MQTT 5) sends it again, as this one does.
    """
    _ingest(stack)
    assert stack.mosquitto
    soil = DeviceClient(stack, "soil-0003")
    soil.client.reconnect_delay_set(0.1, 1)
    t0 = now_ms() - 600_000
    accepted: list[int] = []
    unmatched: list[int] = []

    def stream(start: int, n: int) -> None:
        for i in range(start, start + n):
            while True:
                [rc] = soil.send([{"ts": t0 + i, "seq": i, "values": {"soil_moisture": 22.0}}])
                if rc == 0:  # Success: the broker has it for the ingest session
                    accepted.append(i)
                    break
                assert rc.value == 16, rc  # No matching subscribers: not taken, send again
                unmatched.append(i)
                time.sleep(0.05)
            time.sleep(0.003)

    publisher = threading.Thread(target=stream, args=(0, 400))
    publisher.start()
    time.sleep(0.5)
    stack.mosquitto.restart()  # SIGTERM: the broker writes its persistence file, comes back on the same port
    publisher.join(120)
    stack.stop_ingest()  # readings queued for the ingest session while it is away survive a restart too
    stream(400, 100)
    stack.mosquitto.restart()
    _ingest(stack)
    assert wait_until(lambda: len(_times(stack, "soil", "soil_moisture", "soil-0003")) >= 500, 60)
    assert sorted(accepted) == list(range(500))
    assert sorted(_times(stack, "soil", "soil_moisture", "soil-0003")) == [t0 + i for i in range(500)]
    assert all(i < 400 for i in unmatched)  # only right after the restart with the replica connected


# ---------------------------------------------------------------- the registry database (PostgreSQL) down


class _PgStack(LocalStack):
    """The local stack with its registry in PostgreSQL (as deployed) instead of SQLite."""

    pg_url = ""

    @property
    def database_url(self) -> str:  # type: ignore[override]
        return self.pg_url


def _stop_pg(pg: Postgres) -> None:
    """A fast shutdown (SIGINT): open sessions are cut, as when the database host goes away."""
    assert pg.proc is not None
    pg.signal(signal.SIGINT)
    pg.proc.wait(30)
    pg.proc = None


def _letters(url: str) -> tuple[int, int]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            rows = session.exec(select(func.count()).select_from(DeadLetter)).one()
            payloads = session.exec(select(func.count(func.distinct(DeadLetterPayload.sha256)))).one()
            return int(rows), int(payloads)
    finally:
        engine.dispose()


def test_fault_registry_down_holds_acks_and_loses_no_dead_letter(pg: Postgres, tmp_path: Path) -> None:
    stack = _PgStack(tmp_path / "stack", extra_env={"INGEST_BATCH_MS": "20", "INGEST_REGISTRY_TTL_S": "1"})
    stack.pg_url = pg.create_database(f"registry_{time.monotonic_ns()}")
    stack.start()
    try:
        engine = make_engine(stack.pg_url)
        with Session(engine) as session:
            load_demo(session)
            session.commit()
            stack.secrets = {d.id: provision(session, d.id) for d in session.exec(select(Device))}  # type: ignore[attr-defined]
            session.commit()
        engine.dispose()
        stack.sync_broker()
        time.sleep(0.2)
        proc, _ = _ingest(stack)
        barn = DeviceClient(stack, "barn-0001")
        t = now_ms() - 5000
        barn.send([{"ts": t, "values": {"nh3_ppm": 10.0}}])
        assert wait_until(lambda: len(_times(stack, "barn", "nh3_ppm", "barn-0001")) == 1, 20)

        _stop_pg(pg)  # dead letters arrive while the registry database is away
        bad = [{"ts": t + 1 + i, "values": {"nh3_ppm": 130.0 + i}} for i in range(5)]  # out_of_range
        good = [{"ts": t + 100 + i, "values": {"nh3_ppm": 12.0}} for i in range(5)]
        barn.send(bad + good)
        assert wait_until(lambda: _logged(stack, "dead-letter store unavailable") > 0, 20)
        time.sleep(3)  # past INGEST_REGISTRY_TTL_S: the device table cannot be reloaded either
        assert proc.poll() is None  # the replica waits; it does not crash
        pg.start()
        assert wait_until(lambda: _letters(stack.pg_url) == (5, 5), 30)  # stored once the database is back
        assert wait_until(lambda: len(_times(stack, "barn", "nh3_ppm", "barn-0001")) == 6, 30)

        _stop_pg(pg)  # again, and the replica dies while it holds the batch
        waits = _logged(stack, "dead-letter store unavailable")
        barn.send([{"ts": t + 200 + i, "values": {"nh3_ppm": 150.0 + i}} for i in range(5)])
        assert wait_until(lambda: _logged(stack, "dead-letter store unavailable") > waits, 20)
        _sigkill(stack, proc)
        pg.start()
        _ingest(stack)
        assert wait_until(lambda: _letters(stack.pg_url) == (10, 10), 30)  # each message once
        time.sleep(1)
        assert _letters(stack.pg_url) == (10, 10)
    finally:
        stack.stop()
        if not pg.running:
            pg.start()


# ---------------------------------------------------------------- the spool's disk full (ENOSPC)


@contextlib.contextmanager
def _small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root (CAP_SYS_ADMIN): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_fault_spool_disk_full_stops_acks_and_loses_nothing(stack: LocalStack, tmp_path: Path) -> None:
    with _small_tmpfs(tmp_path / "spoolfs", "160k") as spool_dir:
        try:
            proc, _ = _ingest(stack, SPOOL_DIR=str(spool_dir), INGEST_BATCH_SIZE="20")
            assert stack.influxd
            stack.influxd.stop()
            paddy = DeviceClient(stack, "paddy-0004")
            t0 = now_ms() - 600_000
            total = 0
            for _ in range(60):  # ~2.5 KB of line protocol a message: more than the disk holds
                paddy.send([[{"ts": t0 + total + i, "values": {"water_level_cm": 5.0}} for i in range(20)]])
                total += 20
            assert wait_until(lambda: _logged(stack, "spool cannot be written (disk full?)") > 0, 30)
            assert proc.poll() is None  # holding, not crashing
            _sigkill(stack, proc)  # what the full spool did not take was never acknowledged
            stack.influxd.start()
            _ingest(stack, SPOOL_DIR=str(spool_dir), INGEST_BATCH_SIZE="20")
            # the spool cannot even delete what it replayed, yet new and redelivered readings go on to InfluxDB
            paddy.send([[{"ts": t0 + total + i, "values": {"water_level_cm": 6.0}} for i in range(20)]])
            total += 20
            assert wait_until(lambda: t0 + total - 1 in _times(stack, "paddy", "water_level_cm", "paddy-0004"), 30)
            # whether the replay's delete found room depends on how full the spool's WAL file left the
            # disk; either way the new readings above went straight on, and nothing below is lost
            subprocess.run(["mount", "-o", "remount,size=8m", str(spool_dir)], check=True)  # room again
            assert wait_until(lambda: len(_times(stack, "paddy", "water_level_cm", "paddy-0004")) == total, 60)
            assert sorted(_times(stack, "paddy", "water_level_cm", "paddy-0004")) == [t0 + i for i in range(total)]
            assert wait_until(lambda: _spooled_batches(spool_dir / "ingest-0.sqlite") == 0, 30)
        finally:
            stack.stop_ingest()


def _spooled_batches(path: Path) -> int:
    spool = Spool(path, 10**9)
    try:
        return spool.batches
    finally:
        spool.close()
