"""`village bench api`: trace lookups per second and their latency under concurrent load.

Starts the local stack (InfluxDB, anvil; mosquitto comes with it) in a temporary folder, loads the
demo county and rice season, writes sensor readings, anchors every record, then runs the API as it
runs in production (`village serve`, uvicorn workers, one per core by default) and loads it from a
separate process with `wrk` (Debian package): first the JSON `/api/v1/trace/{code}`, then the page
`/t/{code}` (HTML, Chinese). The per-IP rate limit is raised for the run (every wrk connection
comes from 127.0.0.1). Before measuring, every worker's cache is warmed and the lot's verification
is checked to be `verified`, so the figures are those of a scanned bag in steady state.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from api.demo import DEMO_BAG, seed
from core.db import get_engine
from core.localstack import LocalStack
from core.services import ServiceError, die_with_parent, free_port, wait_for_port

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
SERVE = (sys.executable, "-m", "cli.main", "serve")


def find_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise ServiceError("wrk is not installed: apt-get install wrk (or run `make deps`)")
    return path


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return round(float(m[1]) * _UNITS[m[2]], 3)


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms), requests, errors and non-2xx answers from `wrk --latency`."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.MULTILINE))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if not rps or not total or "50" not in pct or "99" not in pct:
        raise ValueError(f"unexpected wrk output:\n{output}")
    return {
        "requests_per_s": round(float(rps[1]), 1),
        "latency_ms_p50": _ms(pct["50"]),
        "latency_ms_p99": _ms(pct["99"]),
        "requests": int(total[1]),
        "errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "non_2xx": int(non2xx[1]) if non2xx else 0,
    }


def wrk(url: str, *, duration_s: int, connections: int, threads: int, headers: dict[str, str]) -> dict[str, Any]:
    args = [find_wrk(), f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", "--timeout", "5s"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, timeout=duration_s + 60, check=True)
    return parse_wrk(out.stdout)


def start_api(env: dict[str, str], port: int, workers: int, log_file: Path) -> subprocess.Popen:
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            [*SERVE, "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--no-access-log"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
    return proc


def warm(base: str, paths: list[str], rounds: int = 40, settle_s: float = 300) -> dict[str, Any]:
    """Wait until every worker has verified the lot (each keeps its own cache: the trace JSON says
    "checking" until then), then ask each path often enough that every worker caches it; return the
    trace JSON (or the verification, when the first path is /verify)."""
    with httpx.Client(base_url=base, timeout=120) as client:
        deadline = time.monotonic() + settle_s
        settled = 0
        while settled < 2 * rounds and time.monotonic() < deadline:  # consecutive answers from any worker
            answer = client.get(paths[0]).json()
            status = answer.get("verification", answer)["status"]
            settled = settled + 1 if status != "checking" else 0
            if status == "checking":
                time.sleep(0.5)
        for _ in range(rounds):
            for p in paths:
                r = client.get(p, headers={"Accept": "text/html"})
                r.raise_for_status()
        return client.get(paths[0]).json()


def run(
    *,
    duration_s: int = 10,
    connections: int = 32,
    threads: int = 1,
    workers: int | None = None,
    keep: Path | None = None,
) -> dict[str, Any]:
    find_wrk()
    root = keep or Path(tempfile.mkdtemp(prefix="village-bench-api-"))
    stack = LocalStack(root).start(chain=True)
    proc: subprocess.Popen | None = None
    try:
        settings = stack.settings()
        engine = get_engine(stack.database_url)
        with stack.influx() as influx:
            seeded = seed(engine, influx, settings)
        engine.dispose()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        workers = workers or max(1, os.cpu_count() or 1)
        env = {
            **os.environ,
            **stack.env(),
            "API_RATE_LIMIT_PER_MIN": "1000000000",
            "API_VERIFY_CACHE_S": "600",
            "TRACE_BASE_URL": base,
            "LOG_LEVEL": "WARNING",
        }
        proc = start_api(env, port, workers, root / "api.log")
        code = DEMO_BAG.replace("-", "")
        json_path, page_path = f"/api/v1/trace/{code}", f"/t/{code}"
        t0 = time.perf_counter()
        trace = warm(base, [json_path, page_path])
        warm_s = time.perf_counter() - t0
        status = trace["verification"]["status"]
        results = {}
        for name, path, accept in (("json", json_path, "application/json"), ("page", page_path, "text/html")):
            results[name] = wrk(
                base + path,
                duration_s=duration_s,
                connections=connections,
                threads=threads,
                headers={"Accept": accept, "Accept-Language": "zh-CN,zh;q=0.9"},
            )
        return {
            "json": results["json"],
            "page": results["page"],
            "verification": status,
            "workers": workers,
            "connections": connections,
            "wrk_threads": threads,
            "duration_s": duration_s,
            "warmup_s": round(warm_s, 2),
            "readings": seeded["readings"],
            "cores": os.cpu_count(),
        }
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        stack.stop()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
