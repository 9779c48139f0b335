"""Fixtures that start the real services (mosquitto, InfluxDB, ingest) on free ports in temp folders.

A missing service binary fails the test with an install hint (core.services.ServiceError);
nothing is skipped and nothing is mocked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import Session, select

from core.db import get_engine
from core.localstack import LocalStack
from core.models import Device
from core.provisioning import provision
from core.registry_io import load_demo
from core.services import PORTS_ENV, Postgres, postgres
from tests.api_fixtures import api_template  # noqa: F401 (session fixture of the API tests)
from tests.chain_fixtures import anvil, chain  # noqa: F401 (fixtures)
from tests.webhook_receiver import receiver  # noqa: F401 (fixture: a local HTTP receiver of webhooks)

TERMINAL_ENV = ("COLUMNS", "LINES")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist's controller: tell each worker the terminal variables of the run."""
    node.workerinput["terminal_env"] = {name: os.environ.get(name) for name in TERMINAL_ENV}


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test`), each worker draws its services' ports from a range of its own,
    and has the run's COLUMNS and LINES: a worker's readline (its stdin is a pipe) sets COLUMNS=80, which
    would fix the width of a rich console made at import (cli/ledger.py) before a test sets its own."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return
    for name, value in workerinput.get("terminal_env", {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if PORTS_ENV not in os.environ:
        low = 20_000 + 1_000 * (int(workerinput["workerid"].removeprefix("gw")) % 12)  # below ephemeral ports
        os.environ[PORTS_ENV] = f"{low}-{low + 999}"


# The longest test files (minutes each), longest first: `make test` (pytest-xdist, --dist loadfile, files
# handed out in collection order) starts them first, so that no worker begins one while the others finish.
LONGEST_FILES = (
    "test_demo.py",
    "test_faults_lost.py",
    "test_api_security.py",
    "test_bench_anchor.py",
    "test_bench_api_world.py",
    "test_ingest.py",
    "test_faults_supervisor.py",
    "test_bench_and_demo.py",
    "test_device_plane.py",
    "test_province.py",
    "test_dea.py",
    "test_faults_influx.py",
    "test_api_bench.py",
    "test_ingest_qos.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first (a stable sort: every other test keeps its place and its file's order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    """A PostgreSQL server of the module's own (tests make a database each)."""
    # not under pytest's tmp_path: its 0700 parents would keep the 'postgres' user out
    folder = Path(tempfile.mkdtemp(prefix="village-pg-"))
    server = postgres(folder).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    """mosquitto + InfluxDB + registry with the demo county, every device provisioned."""
    s = LocalStack(tmp_path / "stack", extra_env={"INGEST_BATCH_MS": "20", "INGEST_REGISTRY_TTL_S": "1"})
    s.start()
    engine = get_engine(s.database_url)
    with Session(engine) as session:
        load_demo(session)
        session.commit()
        s.secrets = {d.id: provision(session, d.id) for d in session.exec(select(Device))}  # type: ignore[attr-defined]
        session.commit()
    s.sync_broker()
    time.sleep(0.2)  # SIGHUP reload
    try:
        yield s
    finally:
        s.stop()


class DeviceClient:
    """A device connected with its own credentials; `send` waits for the broker's PUBACKs."""

    def __init__(self, stack: LocalStack, device_id: str, secret: str | None = None) -> None:
        assert stack.mosquitto
        self.device_id = device_id
        self.topic = f"v1/devices/{device_id}/telemetry"
        self.results: dict[int, mqtt.ReasonCode] = {}
        self._acked = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device_id}", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(device_id, secret if secret is not None else stack.secrets[device_id])
        self.client.on_publish = self._on_publish
        self.connack: list[mqtt.ReasonCode] = []
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connack.append(rc)
        self.client.connect(stack.mosquitto.host, stack.mosquitto.port)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.connack and time.monotonic() < deadline:
            time.sleep(0.01)

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, rc: mqtt.ReasonCode, _p: object) -> None:
        with self._acked:
            self.results[mid] = rc
            self._acked.notify_all()

    def send(self, payloads: list[bytes | dict | list], topic: str | None = None) -> list[mqtt.ReasonCode]:
        mids = []
        for p in payloads:
            body = p if isinstance(p, bytes) else orjson.dumps(p)
            mids.append(self.client.publish(topic or self.topic, body, qos=1).mid)
        with self._acked:
            assert self._acked.wait_for(lambda: all(m in self.results for m in mids), 30), "no PUBACK"
        return [self.results[m] for m in mids]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def now_ms() -> int:
    return int(time.time() * 1000)


def wait_until(predicate, timeout: float = 30, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def wait_ingest_ready(stack: LocalStack, device: DeviceClient, measurement: str, values: dict) -> None:
    """Publish probe readings until one is stored: the ingest subscription is live."""
    with stack.influx() as influx:
        field = next(iter(values))
        for _ in range(100):
            device.send([{"ts": now_ms(), "values": values}])
            if wait_until(lambda: influx.count(measurement, field) > 0, timeout=0.5):
                return
    raise AssertionError("ingest never stored a probe reading; see ingest.log in the stack folder")
