"""The API benchmark's parts against a real `village serve`: wrk runs and is read, lookups come back 200 under
concurrent load with the rate limit raised, and beyond the rate limit wrk sees the 429s. (The whole
benchmark, `village bench api`, runs its own stack; see bench/api.py.)"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.api import SERVE, find_wrk, warm, wrk
from cli.main import app as cli
from core.services import ServiceError, die_with_parent, free_port, wait_for_port
from tests.api_fixtures import BAG, Template, world_env


def serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*SERVE, "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-log"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
    return proc


@pytest.fixture(scope="module")
def servers(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(an API with the limit raised as the benchmark runs it, one with the default limit of 120/min)"""
    try:
        find_wrk()
    except ServiceError as e:
        pytest.fail(str(e))
    procs, bases = [], []
    for name, limit in (("fast", "1000000000"), ("limited", "120")):
        folder = tmp_path_factory.mktemp(name)
        port = free_port()
        env = {**os.environ, **world_env(api_template, folder, API_RATE_LIMIT_PER_MIN=limit), "LOG_LEVEL": "WARNING"}
        procs.append(serve(env, port, folder / "api.log"))
        bases.append(f"http://127.0.0.1:{port}")
        warm(bases[-1], [f"/api/v1/trace/{BAG}/verify"], rounds=1)  # as the benchmark does, before measuring
    try:
        yield bases[0], bases[1]
    finally:
        for p in procs:
            p.terminate()
            p.wait(15)


def test_lookups_under_load(servers: tuple[str, str]) -> None:
    base, _ = servers
    assert warm(base, [f"/api/v1/trace/{BAG}/verify", f"/t/{BAG}"], rounds=2)["status"] == "verified"
    for path, accept in ((f"/api/v1/trace/{BAG}", "application/json"), (f"/t/{BAG}", "text/html")):
        r = wrk(base + path, duration_s=1, connections=8, threads=1, headers={"Accept": accept})
        assert r["requests"] > 50 and r["errors"] == 0 and r["non_2xx"] == 0, r
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p99"]


def test_wrk_sees_the_rate_limit(servers: tuple[str, str]) -> None:
    _, limited = servers
    r = wrk(f"{limited}/api/v1/trace/{BAG}", duration_s=1, connections=4, threads=1, headers={})
    # the burst of 120 and about 2 more a second get through; the rest are 429s
    assert r["requests"] > 200 and r["requests"] - 130 <= r["non_2xx"] <= r["requests"] - 120, r


def test_bench_command_is_registered() -> None:
    out = CliRunner().invoke(cli, ["bench", "api", "--help"])
    assert out.exit_code == 0 and "wrk" in out.output and "--connections" in out.output
