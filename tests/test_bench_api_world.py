"""`village bench api` at a small scale (200 lots): the world is generated, anchored and served on
PostgreSQL, the three phases run under wrk, the last line is the JSON the issue asks for, and every
lot verifies."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app as cli

PHASE_KEYS = {"requests_per_s", "latency_ms_p50", "latency_ms_p99", "errors"}


def test_bench_api_small_world_prints_its_json_and_every_lot_verifies() -> None:
    out = CliRunner().invoke(
        cli, ["bench", "api", "--lots", "200", "--duration", "8", "--connections", "8", "--warmup", "4"]
    )
    assert out.exit_code == 0, out.output[-3000:]
    r = json.loads(out.output.strip().splitlines()[-1])
    print(json.dumps(r))
    assert r["bench"] == "api" and r["lots"] == 200
    for phase in ("cold", "warm", "dashboard"):
        assert r[phase].keys() >= PHASE_KEYS and r[phase]["requests"] > 0, (phase, r[phase])
        assert r[phase]["latency_ms_p50"] <= r[phase]["latency_ms_p99"]
    assert r["warmup"]["requests"] > 0  # the warm mix sent before the warm phase, reported apart
    assert r["dashboard"]["non_2xx"] == 0  # every dashboard call answers 2xx (the time series: rollups exist)
    assert r["verification"] == {"verified": 200, "pending": 0, "tampered": 0, "unverifiable": 0}
    assert r["workers"] == 2 and r["connections"] == 8 and r["cores"] >= 1
    assert r["setup_s"]["insert_s"] > 0 and r["setup_s"]["anchor_s"] > 0
    assert r["leaves"] > 200 * 2  # every bag's lot record and manifest, and its paddy lot's records
