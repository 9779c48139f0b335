"""The local stack on one machine: registry database, mosquitto, InfluxDB, anvil, ingest replicas
and the anchoring worker.

`village up`, `village demo`, the benchmarks and the integration tests all start the same
stack, so what the tests check is what a user runs. Everything lives under one folder
(`VILLAGE_DATA_DIR`, `var/` by default; a temporary folder in tests) and every server
listens on a free port of 127.0.0.1.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from core.broker_auth import broker_max_packet_size
from core.db import get_engine, migrate, session_scope
from core.influx import InfluxV1
from core.provisioning import ensure_ingest_accounts, sync_broker
from core.services import (
    ANVIL_DEV_KEY,
    Anvil,
    BrokerTls,
    InfluxD,
    Mosquitto,
    anvil,
    die_with_parent,
    influxd,
    mosquitto,
)
from core.settings import Settings


def _read_or_create_secret(path: Path) -> str:
    """A service secret kept in a 0600 file of the stack folder (like a Docker secret)."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


@dataclass
class LocalStack:
    root: Path
    influx_db: str = "village"
    mosquitto: Mosquitto | None = None
    influxd: InfluxD | None = None
    anvil: Anvil | None = None
    ingest_procs: list[subprocess.Popen] = field(default_factory=list)
    anchor_procs: list[subprocess.Popen] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    mqtt_tls: BrokerTls | None = None  # a TLS listener besides the plain one on 127.0.0.1

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.ingest_password = _read_or_create_secret(self.root / "secrets" / "mqtt_ingest_password")
        # The devnet's anchoring key: anvil's first, publicly known dev account. A real chain
        # takes a key of its own through CHAIN_PRIVATE_KEY_FILE (see the README).
        self.chain_key_file = self.root / "secrets" / "chain_key"
        if not self.chain_key_file.exists():
            fd = os.open(self.chain_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(ANVIL_DEV_KEY)

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.root / 'village.db'}"

    @property
    def passwd_file(self) -> Path:
        return self.root / "mosquitto" / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.root / "mosquitto" / "acl"

    @property
    def credentials_file(self) -> Path:
        """Device secrets as the simulated devices hold them (the server keeps only hashes)."""
        return self.root / "secrets" / "devices.json"

    def env(self) -> dict[str, str]:
        """Environment variables that point a `village` process at this stack."""
        assert self.mosquitto and self.influxd, "start the stack first"
        return {
            "VILLAGE_DATA_DIR": str(self.root),
            "DATABASE_URL": self.database_url,
            "MQTT_HOST": self.mosquitto.host,
            "MQTT_PORT": str(self.mosquitto.port),
            "MQTT_INGEST_PASSWORD": self.ingest_password,
            "MOSQUITTO_PASSWD_FILE": str(self.passwd_file),
            "MOSQUITTO_ACL_FILE": str(self.acl_file),
            "INFLUX_URL": self.influxd.url,
            "INFLUX_DB": self.influx_db,
            "SPOOL_DIR": str(self.root / "spool"),
            "INGEST_METRICS_PORT": "0",
            # everything on loopback: replicas re-read the registry every 2 s and a write lands in
            # milliseconds, so a sealed day can be digested 5 s later (ledger/late.py)
            "INGEST_REGISTRY_TTL_S": "2",
            "ANCHOR_SEAL_WAIT_S": "5",
            # anvil mines a block per transaction and no other: one confirmation is all there is
            **(
                {
                    "CHAIN_RPC_URL": self.anvil.url,
                    "CHAIN_PRIVATE_KEY_FILE": str(self.chain_key_file),
                    "CHAIN_CONFIRMATIONS": "1",
                }
                if self.anvil
                else {}
            ),
            **self.extra_env,
        }

    def settings(self) -> Settings:
        return Settings(**self.env())

    def _base_settings(self) -> Settings:
        """The settings the stack's processes share before it runs (limits, replica accounts)."""
        return Settings(_env_file=None, **self.extra_env)  # type: ignore[call-arg]

    def influx(self) -> InfluxV1:
        assert self.influxd
        return InfluxV1(self.influxd.url, self.influx_db)

    def sync_broker(self) -> bool:
        """Regenerate mosquitto's password and ACL files from the registry; reload it when they changed."""
        with session_scope(get_engine(self.database_url)) as session:
            ensure_ingest_accounts(session, self.ingest_password, self._base_settings().ingest_max_replicas)
            changed = sync_broker(session, self.passwd_file, self.acl_file)
        if changed and self.mosquitto and self.mosquitto.running:
            self.mosquitto.reload()
        return changed

    def start(
        self,
        mqtt_port: int | None = None,
        influx_port: int | None = None,
        chain: bool = False,
        chain_port: int | None = None,
        chain_block_s: float | None = None,
    ) -> LocalStack:
        """Start the servers; with `chain`, also anvil (its state kept in the stack folder; a block every
        `chain_block_s` seconds, else each transaction mined at once in its own block)."""
        migrate(self.database_url)
        self.sync_broker()
        self.mosquitto = mosquitto(
            self.root / "mosquitto",
            self.passwd_file,
            self.acl_file,
            port=mqtt_port,
            max_packet_bytes=broker_max_packet_size(self._base_settings().ingest_max_payload_bytes),
            tls=self.mqtt_tls,
        )
        self.influxd = influxd(self.root / "influxdb", port=influx_port)
        if chain:
            state = self.root / "anvil" / "state.json"
            self.anvil = anvil(
                self.root / "anvil", port=chain_port, state_file=state, state_interval_s=30, block_time_s=chain_block_s
            )
            self.anvil.start()
        self.mosquitto.start()
        self.influxd.start()
        with self.influx() as client:
            client.ensure_database()
        return self

    def _spawn(self, args: list[str], log_file: Path, env: dict[str, str]) -> subprocess.Popen:
        with open(log_file, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "cli.main", *args],
                env={**os.environ, **self.env(), **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )

    def start_ingest(self, replicas: int = 1, log_file: Path | None = None, **env: str) -> list[subprocess.Popen]:
        """Start ingest replicas as separate processes (`village ingest --replica i`)."""
        log = log_file or self.root / "ingest.log"
        procs = [self._spawn(["ingest", "--replica", str(i)], log, env) for i in range(replicas)]
        self.ingest_procs += procs
        return procs

    def start_anchor(self, **env: str) -> subprocess.Popen:
        """Start the anchoring worker (`village anchor`) against this stack's anvil."""
        assert self.anvil, "start the stack with chain=True"
        proc = self._spawn(["anchor"], self.root / "anchor.log", env)
        self.anchor_procs.append(proc)
        return proc

    def stop_ingest(self, timeout: float = 15) -> None:
        _terminate(self.ingest_procs, timeout)

    def stop(self) -> None:
        _terminate(self.anchor_procs, 15)
        self.stop_ingest()
        for service in (self.mosquitto, self.influxd, self.anvil):
            if service:
                service.stop()


def _terminate(procs: list[subprocess.Popen], timeout: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    procs.clear()
