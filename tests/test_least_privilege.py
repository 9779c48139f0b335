"""Least privilege, rehearsed on real services: a PostgreSQL cluster whose roles come from the
deployment's own init script (deploy/postgres/init-roles.sh) and grants from `village registry
migrate` (core/db_roles.py), an InfluxDB with a read-only user for the API, the anchoring worker and
the alert worker and a write-only user for ingest, and anvil. Each service's code runs as its own role and does its job;
what it never does is refused by the database, not by our code.

InfluxDB here is Debian's 1.x with users and database grants; production runs 2.x with v1
authorizations made by deploy/influxdb/init-auth.sh (not runnable here). The code's side is the same:
v1 basic auth (INFLUX_USERNAME / INFLUX_PASSWORD) on /write and /query.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import ProgrammingError
from sqlmodel import Session, select
from typer.testing import CliRunner

from api.app import create_app
from api.users import add_user
from cli.main import app
from core.catalogue import get_catalogue
from core.db import migrate
from core.db_roles import GRANTS, TABLES, role_of
from core.influx import InfluxRejected, InfluxV1
from core.models import DeadLetter, Device
from core.provisioning import provision
from core.services import ANVIL_DEV_KEY, Anvil, InfluxD, Postgres, anvil, influxd, postgres
from core.settings import Settings, get_settings
from ingest.enrich import DeviceDirectory
from ingest.metrics import IngestMetrics
from ingest.payload import Reading, Validator
from ingest.pipeline import Message, Pipeline, to_line
from ingest.spool import Spool
from ledger.anchor_models import AnchorWindow, LedgerLeaf
from ledger.anchoring import Anchorer
from ledger.chain import Chain
from ledger.models import Lot, TraceEvent
from ledger.trace_io import load_demo_trace
from tests.webhook_receiver import Receiver

REPO = Path(__file__).resolve().parents[1]
INIT_ROLES = REPO / "deploy" / "postgres" / "init-roles.sh"
SERVICES = ("migrate", "api", "ingest", "anchor", "broker", "alerts")
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
INFLUX_USERS = {"village_api": "READ", "village_anchor": "READ", "village_ingest": "WRITE", "village_alerts": "READ"}
BAG = "M35CW3XRD6R"
PASSWORD = "a-long-enough-password-1"


@dataclass
class Deployment:
    pg: Postgres
    influx: InfluxD
    chain: Anvil
    contract: str
    secrets: Path
    folder: Path

    def url(self, service: str) -> str:
        return f"postgresql+psycopg://{role_of(service)}@{self.pg.host}:{self.pg.port}/village"

    def engine(self, service: str) -> Engine:
        return create_engine(self.url(service))

    def settings(self, service: str, **extra: object) -> Settings:
        """A service's settings as docker-compose.yml gives them: its role, its password, its InfluxDB user."""
        values: dict[str, object] = {
            "DATABASE_URL": self.url(service),
            "DATABASE_PASSWORD": (self.secrets / f"pg_password_{service}").read_text(),
            "INFLUX_URL": self.influx.url,
            "CHAIN_RPC_URL": self.chain.url,
            "CHAIN_TIMEOUT_S": 5,
            "VILLAGE_DATA_DIR": str(self.folder / service),
            "ANCHOR_WINDOW_SECONDS": 0,
        }
        if role_of(service) in INFLUX_USERS:
            values |= {"INFLUX_USERNAME": role_of(service), "INFLUX_PASSWORD": PASSWORD}
        return Settings(_env_file=None, **{k: str(v) for k, v in {**values, **extra}.items()})  # type: ignore[arg-type]


def refused(engine: Engine, sql: str) -> None:
    """`sql` fails with PostgreSQL's insufficient_privilege (42501)."""
    with pytest.raises(ProgrammingError) as caught, engine.begin() as conn:
        conn.execute(text(sql))
    assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege), caught.value


def _influx_with_users(folder: Path) -> InfluxD:
    server = influxd(folder, auth=True)
    server.start()
    admin = ("admin", PASSWORD)
    # The first user may be created without credentials, and must be an admin.
    httpx.post(f"{server.url}/query", data={"q": f"CREATE USER admin WITH PASSWORD '{PASSWORD}' WITH ALL PRIVILEGES"})
    statements = ["CREATE DATABASE village"]
    for user, privilege in INFLUX_USERS.items():
        statements += [f"CREATE USER {user} WITH PASSWORD '{PASSWORD}'", f"GRANT {privilege} ON village TO {user}"]
    for q in statements:
        assert httpx.post(f"{server.url}/query", data={"q": q}, auth=admin).status_code == 200, q
    return server


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    # not under pytest's tmp_path: its 0700 parents would keep the 'postgres' user out
    folder = Path(tempfile.mkdtemp(prefix="village-roles-"))
    folder.chmod(0o755)  # the cluster in folder/pg runs as the 'postgres' user when we are root
    pg = postgres(folder / "pg").start()
    influx = _influx_with_users(folder / "influx")
    node = anvil(folder / "anvil", slots_in_an_epoch=1).start()
    try:
        pg.create_database("village")
        secrets = folder / "secrets"
        secrets.mkdir()
        for service in SERVICES:
            (secrets / f"pg_password_{service}").write_text(f"pw-{service}-{os.urandom(8).hex()}\n")
        env = {
            "PATH": os.environ["PATH"],
            "PGHOST": pg.host,
            "PGPORT": str(pg.port),
            "POSTGRES_USER": pg.user,
            "POSTGRES_DB": "village",
            "VILLAGE_DB_SECRETS_DIR": str(secrets),
        }
        done = subprocess.run(["sh", str(INIT_ROLES)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        chain = Chain.connect(Settings(_env_file=None, CHAIN_RPC_URL=node.url), private_key=ANVIL_DEV_KEY)  # type: ignore[call-arg]
        chain.ensure_contract(folder / "trace_anchor.json")
        d = Deployment(pg, influx, node, chain.address, secrets, folder)
        # `village registry migrate` as the compose `migrate` service runs it: schema, then grants.
        get_settings.cache_clear()
        migrate_env = {"DATABASE_URL": d.url("migrate"), "DATABASE_PASSWORD": "x", "VILLAGE_DATA_DIR": str(folder)}
        out = CliRunner().invoke(app, ["registry", "migrate"], env=migrate_env)
        get_settings.cache_clear()
        assert out.exit_code == 0 and "privileges granted to village_api" in out.output, out.output
        owner = d.engine("migrate")
        with Session(owner) as session:  # `registry demo` / `lots import`, run as the owner
            load_demo_trace(session)
            for device_id in session.exec(select(Device.id)).all():
                provision(session, device_id)
            add_user(session, "county", PASSWORD, "county_admin", "211122")
            add_user(session, "beizhengjia", PASSWORD, "village_operator", "211122101201")
            session.commit()
        owner.dispose()
        # the anchoring worker, as its own role: the demo season goes on chain
        engine = d.engine("anchor")
        settings = d.settings("anchor")
        with InfluxV1.from_settings(settings) as reader:
            report = Anchorer(
                engine,
                settings,
                chain=Chain.connect(settings, private_key=ANVIL_DEV_KEY, contract_address=d.contract),
                influx=reader,
            ).run_once()
        engine.dispose()
        assert report.windows and not report.chain_error, report
        yield d
    finally:
        node.stop()
        influx.stop()
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


def superuser(d: Deployment) -> psycopg.Connection:
    return psycopg.connect(f"host={d.pg.host} port={d.pg.port} user={d.pg.user} dbname=village", autocommit=True)


def test_init_script_creates_one_login_role_per_service(deployment: Deployment) -> None:
    with superuser(deployment) as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolpassword IS NOT NULL "
            "FROM pg_authid WHERE rolname LIKE 'village\\_%'"
        ).fetchall()
        assert {r[0] for r in rows} == {role_of(s) for s in SERVICES}
        assert all(r[1:] == (True, False, False, False, True) for r in rows), rows  # login with a password, no more
        assert not conn.execute("SELECT has_database_privilege('public', 'village', 'CONNECT')").fetchone()[0]
    refused(deployment.engine("api"), "CREATE TABLE evil (i int)")  # only the owner creates tables


def test_every_table_is_declared(deployment: Deployment) -> None:
    """A table added by a migration must be given to the services that need it in core/db_roles.py."""
    with superuser(deployment) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == set(TABLES), f"undeclared: {sorted(tables - set(TABLES))}; gone: {sorted(set(TABLES) - tables)}"


def test_privileges_are_exactly_the_declared_ones(deployment: Deployment) -> None:
    with superuser(deployment) as conn:
        for service, grant in GRANTS.items():
            role = role_of(service)
            for table in TABLES:
                for privilege in PRIVILEGES:
                    has = conn.execute("SELECT has_table_privilege(%s, %s, %s)", (role, table, privilege)).fetchone()[0]
                    expected = privilege in grant.privileges(table) and table not in grant.columns
                    assert has == expected, f"{role} {privilege} on {table}: {has}"
                for column in grant.columns.get(table, ()):
                    assert conn.execute(
                        "SELECT has_column_privilege(%s, %s, %s, 'SELECT')", (role, table, column)
                    ).fetchone()[0]
            migrate(deployment.url(service))  # each command checks the schema is current: it may, as any role


def test_ingest_role_stores_readings_and_dead_letters_and_nothing_else(deployment: Deployment) -> None:
    settings = deployment.settings("ingest")
    engine = deployment.engine("ingest")
    influx = InfluxV1.from_settings(settings)
    influx.ensure_database()  # as ingest does at start: refused for a write-only user, and harmless
    stop = threading.Event()  # the dead-letter store retries while the database refuses: give up, fail
    timer = threading.Timer(30, stop.set)
    timer.start()
    spool = Spool(deployment.folder / "ingest-0.sqlite", 1 << 20)
    catalogue = get_catalogue(None)
    pipeline = Pipeline(
        catalogue=catalogue,
        validator=Validator.from_settings(catalogue, settings),
        directory=DeviceDirectory(engine),
        influx=influx,
        spool=spool,
        engine=engine,
        metrics=IngestMetrics(CollectorRegistry()),
        stop=stop,
    )
    now = int(time.time() * 1000) - 60_000
    good = Message(
        "v1/devices/soil-0001/telemetry", json.dumps({"ts": now, "values": {"soil_moisture": 30.5}}).encode(), now
    )
    bad = Message(
        "v1/devices/soil-0001/telemetry", json.dumps({"ts": now, "values": {"soil_moisture": 300}}).encode(), now
    )
    pipeline.handle([good, bad])
    pipeline.handle([Message(bad.topic, bad.payload, now, redelivered=True)])  # the redelivery check reads
    assert len(spool) == 0  # written to InfluxDB, not spooled
    with Session(deployment.engine("migrate")) as session:
        assert len(session.exec(select(DeadLetter).where(DeadLetter.device_id == "soil-0001")).all()) == 1
    reader = InfluxV1.from_settings(deployment.settings("api"))
    assert reader.count("soil", "soil_moisture") >= 1
    with pytest.raises(InfluxRejected):  # ingest writes readings; it cannot read them back
        influx.query('SELECT COUNT("soil_moisture") FROM "soil"')
    for sql in (
        "SELECT secret_hash FROM device",
        "SELECT * FROM api_user",
        "SELECT contact_phone FROM farm",
        "SELECT lat, lon FROM plot",
        "UPDATE device SET status = 'active'",
        "DELETE FROM dead_letter",
        "INSERT INTO ledger_leaf (kind, record_id, leaf, canonical) VALUES ('x/1', 1, '0x', '')",
    ):
        refused(engine, sql)
    timer.cancel()
    influx.close()
    reader.close()
    spool.close()
    engine.dispose()


def test_anchor_role_anchors_and_cannot_touch_trace_records(deployment: Deployment) -> None:
    with Session(deployment.engine("migrate")) as session:  # a new event, recorded through the admin path
        ev = session.exec(select(TraceEvent)).first()
        assert ev is not None
        session.add(TraceEvent(**ev.model_dump(exclude={"id", "event_id", "salt", "recorded_at"})))
        session.commit()
    settings = deployment.settings("anchor")
    engine = deployment.engine("anchor")
    chain = Chain.connect(settings, private_key=ANVIL_DEV_KEY, contract_address=deployment.contract)
    with InfluxV1.from_settings(settings) as reader:
        worker = Anchorer(engine, settings, chain=chain, influx=reader)
        report = worker.run_once()
        assert report.leaves >= 2 and report.sent, report  # the event and the lots' new manifests
        with pytest.raises(InfluxRejected):
            reader.write("soil,device=x soil_moisture=1 1")
    with Session(engine) as session:
        assert session.exec(select(AnchorWindow).where(AnchorWindow.window_id == report.sent[-1])).one().tx_hash
    for sql in (
        "UPDATE lot SET quantity = 20000",
        "UPDATE inspection SET passed = true",
        "DELETE FROM inspection",
        "DELETE FROM ledger_leaf",
        "INSERT INTO trace_event_lot (trace_event_id, lot_id, role) VALUES (1, 1, 'input')",
        "SELECT * FROM api_user",
        "SELECT * FROM dead_letter",
        "SELECT * FROM service_account",
    ):
        refused(engine, sql)
    engine.dispose()


def test_api_role_serves_and_administers_but_never_writes_the_ledger(deployment: Deployment) -> None:
    settings = deployment.settings(
        "api",
        CHAIN_CONTRACT_ADDRESS=deployment.contract,
        API_JWT_SECRET="test-secret-for-the-api-tests-only-0123456789",
        API_VERIFY_CACHE_S=0,
    )
    with TestClient(create_app(settings)) as client:
        r = client.post("/api/v1/auth/token", data={"username": "beizhengjia", "password": PASSWORD})
        assert r.status_code == 200, r.text
        h = {"Authorization": f"Bearer {r.json()['access_token']}"}
        assert client.post("/api/v1/auth/keys", headers=h, json={"name": "sync"}).status_code == 201
        assert client.get("/api/v1/dashboard/devices", headers=h).status_code == 200  # reads dead letters too
        assert client.get(f"/api/v1/trace/{BAG}/verify").json()["status"] == "verified"
        assert client.get(f"/api/v1/trace/{BAG}/proof").status_code == 200
        farm = {"code": "PS-F099", "name": "新合作社", "village_code": "211122101201"}
        assert client.post("/api/v1/admin/farms", headers=h, json=farm).status_code == 201
        assert client.patch("/api/v1/admin/farms/PS-F099", headers=h, json={"name": "新合作社二"}).status_code == 200
        device = {"id": "soil-9001", "kind": "soil", "plot_no": "211122101201-001"}
        assert client.post("/api/v1/admin/devices", headers=h, json=device).status_code == 201
        assert client.post("/api/v1/admin/devices/soil-9001/revoke", headers=h).status_code == 200
        lot = {
            "product": "paddy-yf47",
            "lot_no": "2027-101201-001",
            "farm": "PS-F001",
            "harvest_year": 2027,
            "sources": [{"plot_no": "211122101201-001", "area_mu": 152}],
        }
        made = client.post("/api/v1/admin/lots", headers=h, json=lot)
        assert made.status_code == 201, made.text
        event = {
            "action": "ADD",
            "step": "sowing",
            "disposition": "active",
            "time": "2027-04-14T07:30:00+08:00",
            "lot": made.json()["code"],
            "read_point": {"plot_no": "211122101201-001"},
            "attributes": {"variety": "盐丰47", "seed_kg_per_mu": 4.5},
        }
        assert client.post("/api/v1/admin/events", headers=h, json=event).status_code == 201
        insp = {
            "lot": made.json()["code"],
            "lab": "盘锦市农产品质量检测中心",
            "report_no": "T-2027-9",
            "sampled_on": "2027-10-05",
            "items": [{"item": "cadmium", "value": 0.1, "unit": "mg/kg", "limit": 0.2, "method": "GB 2762-2022"}],
        }
        assert client.post("/api/v1/admin/inspections", headers=h, json=insp).status_code == 201
    engine = deployment.engine("api")
    for sql in (
        "INSERT INTO anchor_window (seq, window_id, root, prev_root, leaf_count, state, created_at, attempts) "
        "VALUES (999, 'w999', '0x1', '0x0', 1, 'pending', now(), 0)",
        "UPDATE ledger_leaf SET leaf = '0x00'",
        "UPDATE lot_manifest SET version = version",
        "DELETE FROM inspection",
        "DELETE FROM lot",
        "SELECT * FROM service_account",
        "INSERT INTO dead_letter (received_at, topic, reason, detail, more) VALUES (now(), 't', 'r', 'd', 0)",
    ):
        refused(engine, sql)
    with InfluxV1.from_settings(settings) as api_influx, pytest.raises(InfluxRejected):
        api_influx.write("soil,device=x soil_moisture=1 1")  # the API reads telemetry, never writes it
    engine.dispose()
    with Session(deployment.engine("migrate")) as session:
        assert session.exec(select(Lot).where(Lot.lot_no == "2027-101201-001")).one()
        assert session.exec(select(LedgerLeaf)).first() is not None


def test_broker_role_syncs_the_broker_files(deployment: Deployment) -> None:
    folder = deployment.folder / "broker"
    env = {
        "DATABASE_URL": deployment.url("broker"),
        "DATABASE_PASSWORD": "x",
        "MQTT_INGEST_PASSWORD": "ingest-password-1",
        "MOSQUITTO_PASSWD_FILE": str(folder / "passwd"),
        "MOSQUITTO_ACL_FILE": str(folder / "acl"),
        "VILLAGE_DATA_DIR": str(folder),
    }
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(app, ["broker", "sync"], env=env)
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    passwd = (folder / "passwd").read_text()
    assert passwd.startswith("ingest-0:") and "soil-0001:" in passwd
    engine = deployment.engine("broker")
    for sql in (
        "SELECT * FROM api_user",
        "UPDATE device SET status = 'active'",
        "INSERT INTO dead_letter (received_at, topic, reason, detail, more) VALUES (now(), 't', 'r', 'd', 0)",
        "SELECT * FROM lot",
        "DELETE FROM service_account",
    ):
        refused(engine, sql)
    engine.dispose()


def test_alerts_role_opens_resolves_and_notifies_but_never_rewrites_history(
    deployment: Deployment, receiver: Receiver
) -> None:
    """The alert worker, as village_alerts: opens an alert from a dry reading and delivers its webhook;
    the API, as village_api, acknowledges it; neither may change or delete an alert's history."""
    from api.models import Alert, AlertEvent, WebhookDelivery
    from api.services import alerts, webhooks

    hooks = deployment.folder / "hooks.yaml"
    hooks.write_text(f'endpoints: [{{name: ops, format: json, url: "{receiver.url}/h"}}]')
    settings = deployment.settings("alerts", ALERT_WEBHOOKS_FILE=hooks)
    ingest = deployment.settings("ingest")
    info = DeviceDirectory(deployment.engine("ingest")).get("soil-0001")
    assert info is not None and info.tags
    with InfluxV1.from_settings(ingest) as writer:  # a dry reading, written as ingest writes it
        writer.write(
            to_line(Reading("soil-0001", "soil", int(time.time() * 1000) - 60_000, {"soil_moisture": 9.0}), info.tags)
        )
    engine = deployment.engine("alerts")
    with InfluxV1.from_settings(settings) as reader:
        report = alerts.evaluate(engine, reader, get_catalogue(None), settings)
        with pytest.raises(InfluxRejected):
            reader.write("soil,device=x soil_moisture=1 1")  # reads telemetry, never writes it
    assert len(report.opened) == 1, report
    deliverer = webhooks.Deliverer(engine, settings, webhooks.Webhooks.from_settings(settings))
    assert deliverer.run_once() == 1 and receiver.wait(1)[0].json()["event"] == "opened"
    with Session(engine) as session:
        assert session.exec(select(WebhookDelivery)).one().state == "delivered"
    api = deployment.engine("api")
    with Session(api) as session:  # what POST /api/v1/alerts/{id}/acknowledge does, as the API's role
        alert = session.get(Alert, report.opened[0])
        assert alert is not None
        alerts.acknowledge(session, alert, "beizhengjia", "已派人", webhooks.load_config(settings))
        assert len(session.exec(select(AlertEvent)).all()) == 2
    for e in (engine, api):
        for sql in ("UPDATE alert_event SET note = 'rewritten'", "DELETE FROM alert_event", "DELETE FROM alert"):
            refused(e, sql)
    for sql in ("SELECT * FROM api_user", "SELECT * FROM service_account", "UPDATE device SET status = 'revoked'"):
        refused(engine, sql)
    engine.dispose()
    api.dispose()
