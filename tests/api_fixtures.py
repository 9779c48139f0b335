"""Fixtures of the API tests: one real InfluxDB and one anvil for the session, a demo registry built and
anchored once (the template), and a fresh copy of it for each test module that changes data.

The template holds: the demo county and its 2026 rice season (ledger.trace_io.load_demo_trace), three
days of July readings on the demo plots, every record anchored on anvil (so the demo bag verifies),
rollups of those readings, fresh readings "now" for a few devices (one with dry soil, a collar with a
fever), a dead letter for one device, a second county (for out-of-area checks), and one user per role.
Copies of the database file share InfluxDB and the chain: their anchored records are the same bytes.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from api.app import create_app
from api.demo import ensure_demo_users, seed
from api.users import add_user
from core.db import get_engine, migrate
from core.influx import InfluxV1
from core.models import DeadLetter, DeadLetterPayload, Device
from core.provisioning import provision
from core.registry_io import import_data
from core.services import ANVIL_DEV_KEY, anvil, influxd
from core.settings import Settings
from ingest.enrich import DeviceDirectory
from ingest.payload import Reading
from ingest.pipeline import to_line

PASSWORD = "demo-password-1"
BAG = "M35CW3XRD6R"  # demo bag, GTIN 06947512300010 lot 2026-M01-A
BAG_GTIN, BAG_LOT = "06947512300010", "2026-M01-A"
OTHER_COUNTY = {
    "counties": [{"code": "211103", "name_zh": "双台子区", "name_en": "Shuangtaizi District"}],
    "townships": [{"code": "211103001", "county_code": "211103", "name_zh": "测试街道"}],
    "villages": [{"code": "211103001001", "township_code": "211103001", "name_zh": "测试村"}],
    "farms": [
        {
            "code": "ST-F001",
            "name": "测试农场",
            "village_code": "211103001001",
            "contact_name": "赵测试",
            "contact_phone": "13900000999",
        }
    ],
    "plots": [
        {
            "plot_no": "211103001001-001",
            "farm_code": "ST-F001",
            "village_code": "211103001001",
            "area_mu": 10,
            "crop": "rice",
        }
    ],
}
# user name -> (role, scope); every password is PASSWORD
USERS = {
    "county": ("county_admin", "211122"),
    "shaling": ("township_officer", "211122101"),
    "beizhengjia": ("village_operator", "211122101201"),
    "analyst": ("analyst", "211122"),
    "changtun": ("village_operator", "211122104201"),
    "other": ("county_admin", "211103"),
}


@dataclass
class Template:
    db: Path
    influx_url: str
    chain_url: str
    contract: str
    data_dir: Path


def _now_readings(engine, influx: InfluxV1) -> None:  # type: ignore[no-untyped-def]
    """Fresh readings: soil-0001 dry (drought alert for rice), collar-0001 feverish, paddy-0001 normal."""
    directory = DeviceDirectory(engine)
    now = int(time.time() * 1000) - 60_000
    lines = []
    for device, kind, values in (
        ("soil-0001", "soil", {"soil_moisture": 12.0, "soil_temp_c": 14.0}),
        ("paddy-0001", "paddy", {"water_level_cm": 4.0, "water_temp_c": 12.0}),
        ("collar-0001", "collar", {"body_temp_c": 40.6, "activity": 120.0, "rumination_min": 20.0}),
    ):
        info = directory.get(device)
        assert info is not None and info.tags, device
        lines.append(to_line(Reading(device, kind, now, values), info.tags))
    influx.write("\n".join(lines))


@pytest.fixture(scope="session")
def api_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    root = tmp_path_factory.mktemp("api-template")
    influx_server = influxd(root / "influx").start()
    chain = anvil(root / "anvil", slots_in_an_epoch=1).start()
    try:
        db = root / "template.db"
        url = f"sqlite:///{db}"
        migrate(url)
        settings = Settings(
            _env_file=None,
            VILLAGE_DATA_DIR=str(root / "data"),
            DATABASE_URL=url,
            INFLUX_URL=influx_server.url,
            CHAIN_RPC_URL=chain.url,
            CHAIN_PRIVATE_KEY=ANVIL_DEV_KEY,
            CHAIN_TIMEOUT_S=5,
        )  # type: ignore[call-arg]
        engine = get_engine(url)
        influx = InfluxV1(influx_server.url, "village")
        out = seed(engine, influx, settings)
        assert out["windows"] and not out["chain_error"], out
        from analytics.rollups import from_settings

        from_settings(settings).backfill()
        _now_readings(engine, influx)
        with Session(engine) as session:
            import_data(session, OTHER_COUNTY)
            for device_id in session.exec(select(Device.id)).all():  # as `village up` does: every device active
                provision(session, device_id)
            ensure_demo_users(session, PASSWORD)
            for name, (role, scope) in USERS.items():
                add_user(session, name, PASSWORD, role, scope, update=True)
            raw = b'{"values": {"water_level_cm": 99}}'
            payload = DeadLetterPayload(size=len(raw), sha256=hashlib.sha256(raw).hexdigest(), payload=raw)
            session.add(payload)
            session.flush()
            session.add(
                DeadLetter(
                    topic="v1/devices/paddy-0002/telemetry",
                    device_id="paddy-0002",
                    reason="out_of_range",
                    detail="water_level_cm 99 above 50",
                    payload_id=payload.id,
                )
            )
            session.commit()
        from ledger.connect import reading_chain

        contract = reading_chain(settings)
        assert contract is not None
        address = contract.address
        engine.dispose()
        with sqlite3.connect(db) as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        influx.close()
        yield Template(db, influx_server.url, chain.url, address, root / "data")
    finally:
        chain.stop()
        influx_server.stop()


def world_env(template: Template, folder: Path, **extra: object) -> dict[str, str]:
    """Settings (as environment variables) of a fresh copy of the template registry in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "registry.db"
    shutil.copyfile(template.db, db)
    values: dict[str, object] = {
        "VILLAGE_DATA_DIR": str(folder),
        "DATABASE_URL": f"sqlite:///{db}",
        "INFLUX_URL": template.influx_url,
        "CHAIN_RPC_URL": template.chain_url,
        "CHAIN_CONTRACT_ADDRESS": template.contract,
        "CHAIN_TIMEOUT_S": 5,
        "API_JWT_SECRET": "test-secret-for-the-api-tests-only-0123456789",
        "API_RATE_LIMIT_PER_MIN": 100_000,
        "API_VERIFY_CACHE_S": 60,
        "API_INDICATORS_WARM": "false",  # tests change the world under the app: nothing computed ahead
        "TRACE_BASE_URL": "https://trace.example.cn",
        **extra,
    }
    return {k: str(v) for k, v in values.items()}


def world_settings(template: Template, folder: Path, **extra: object) -> Settings:
    """Settings of a fresh copy of the template registry in `folder`."""
    return Settings(_env_file=None, **world_env(template, folder, **extra))  # type: ignore[arg-type]


def make_client(template: Template, folder: Path, **extra: object) -> TestClient:
    return TestClient(create_app(world_settings(template, folder, **extra)))


def token(client: TestClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    r = client.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def is_problem(r, status: int, slug: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    """Assert an RFC 9457 problem answer; return its body."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers["content-type"]
    body = r.json()
    assert body["status"] == status and body["title"] and "instance" in body
    if slug is not None:
        assert body["type"].endswith(f"/problems/{slug}"), body["type"]
    return body
