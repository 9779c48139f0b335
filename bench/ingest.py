"""`village bench ingest`: readings per second stored end to end, readings lost, latency.

Starts its own stack (mosquitto, InfluxDB, ingest replicas) in a temporary folder,
registers and provisions many devices, publishes a fixed number of readings through
mosquitto as fast as the broker takes them (one `mosquitto_pub` per device, see
`simulators.loadgen`), and waits until InfluxDB holds them all. Figures:

- stored_per_s: readings counted in InfluxDB / seconds from the first publish to the
  last reading stored;
- lost: readings acknowledged by the broker minus readings stored minus dead letters;
- latency p50/p99: reading `ts` (its publish time) to the moment its batch was written,
  read off the ingest replicas' Prometheus histograms (linear within a bucket).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from core.db import get_engine, migrate, session_scope
from core.influx import InfluxV1
from core.localstack import LocalStack
from core.models import DeadLetter
from core.provisioning import provision
from core.registry_io import import_data
from core.services import free_ports
from simulators.loadgen import SAMPLE_VALUES, publish_load

KINDS = ("soil", "paddy")


def bench_registry(devices: int) -> dict[str, list[dict[str, Any]]]:
    """A synthetic county with one plot per device (soil probes and paddy gauges alternate)."""
    village = "211122101201"
    plots = [
        {"plot_no": f"B-{i:05d}", "farm_code": "BENCH", "village_code": village, "area_mu": 100, "crop": "rice"}
        for i in range(devices)
    ]
    return {
        "counties": [{"code": "211122", "name_zh": "盘山县", "name_en": "Panshan County"}],
        "townships": [{"code": "211122101", "county_code": "211122", "name_zh": "沙岭镇"}],
        "villages": [{"code": village, "township_code": "211122101", "name_zh": "北郑家村"}],
        "farms": [{"code": "BENCH", "name": "bench cooperative", "village_code": village}],
        "plots": plots,
        "devices": [
            {"id": f"{KINDS[i % 2]}-b{i:05d}", "kind": KINDS[i % 2], "plot_no": p["plot_no"]}
            for i, p in enumerate(plots)
        ],
    }


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Quantile from cumulative histogram buckets [(upper bound, count)], linear within a bucket."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lo_bound
            return lo_bound + (bound - lo_bound) * (rank - lo_count) / max(count - lo_count, 1e-9)
        lo_bound, lo_count = bound, count
    return buckets[-1][0]


# One client for all scrapes: `httpx.get` builds a client, and with it a TLS context, per call.
_METRICS = httpx.Client(timeout=5)


def scrape_done(ports: list[int]) -> float:
    """Readings the replicas have written to InfluxDB or dead-lettered so far (their counters).

    Read with a line scan, not the Prometheus parser: this runs every 50 ms during the run, and
    parsing the whole exposition (histograms included) cost a quarter of a core."""
    total = 0.0
    for port in ports:
        text = _METRICS.get(f"http://127.0.0.1:{port}/metrics").text
        for line in text.splitlines():
            if line.startswith(("village_ingest_readings_stored_total", "village_ingest_readings_rejected_total")):
                total += float(line.rsplit(" ", 1)[1])
    return total


def scrape_lag(ports: list[int]) -> list[tuple[float, float]]:
    """Merge the store-lag histograms of all replicas into cumulative [(bound s, count)]."""
    merged: dict[float, float] = {}
    for port in ports:
        text = _METRICS.get(f"http://127.0.0.1:{port}/metrics").text
        for family in text_string_to_metric_families(text):
            if family.name != "village_ingest_store_lag_seconds":
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    merged[bound] = merged.get(bound, 0.0) + sample.value
    return sorted(merged.items())


def _stored(client: InfluxV1) -> int:
    return sum(client.count(kind, next(iter(SAMPLE_VALUES[kind](0)))) for kind in KINDS)


def run(
    readings: int = 200_000,
    devices: int = 200,
    per_message: int = 1,
    replicas: int = 2,
    timeout: float = 600.0,
    keep: Path | None = None,
    rate: float | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="village-bench-") as tmp:
        root = keep or Path(tmp)
        metrics_base = free_ports(replicas)
        stack = LocalStack(root / "stack", extra_env={"LOG_LEVEL": "WARNING"})
        engine = get_engine(stack.database_url)
        try:
            migrate(stack.database_url)
            with session_scope(engine) as session:
                import_data(session, bench_registry(devices), "bench")
                session.flush()
                creds = [(d["id"], provision(session, d["id"]), d["kind"]) for d in bench_registry(devices)["devices"]]
            stack.start()
            ports = [metrics_base + i for i in range(replicas)]
            stack.start_ingest(replicas, INGEST_METRICS_PORT=str(metrics_base))
            influx = stack.influx()  # one client for all the polling below
            _wait_ready(stack, influx, creds[0])
            baseline = _stored(influx)
            load = publish_load(
                creds, stack.mosquitto.host, stack.mosquitto.port, readings, per_message, rate=rate, count_acks=False
            )
            t0 = load.started
            expected = baseline + load.readings
            deadline = time.monotonic() + timeout
            # Watch the replicas' counters (cheap), not InfluxDB: a count scans every point, and
            # polling it while the stack runs flat out took CPU from the stack it measures.
            done_at = scrape_done(ports)
            while done_at < expected and time.monotonic() < deadline:
                time.sleep(0.05)
                done_at = scrape_done(ports)
            elapsed = time.perf_counter() - t0
            stored = _stored(influx)  # the figure itself is counted in InfluxDB
            while stored < expected and time.monotonic() < deadline:  # should not happen: then time it
                time.sleep(0.2)
                stored = _stored(influx)
                elapsed = time.perf_counter() - t0
            with session_scope(engine) as session:
                rejected = int(session.exec(select(func.coalesce(func.sum(1 + DeadLetter.more), 0))).one()[0])
            lag = scrape_lag(ports)
            stored -= baseline
            acked_readings = round(load.acked * load.readings_per_message)
            return {
                "bench": "ingest",
                "payload": "single" if per_message == 1 else f"array of {per_message}",
                "paced_messages_per_s": rate,
                "readings": load.readings,
                "messages": load.messages,
                "devices": devices,
                "ingest_replicas": replicas,
                "cores": os.cpu_count(),
                "cores_note": "publishers, mosquitto, ingest and InfluxDB share these cores",
                "published_per_s": round(load.readings / load.seconds),
                "stored_per_s": round(stored / elapsed),
                "seconds": round(elapsed, 2),
                "broker_acked_readings": acked_readings,
                "stored": stored,
                "rejected": rejected,
                "lost": acked_readings - stored - rejected,
                "latency_ms_p50": round(_quantile(lag, 0.5) * 1000, 1),
                "latency_ms_p99": round(_quantile(lag, 0.99) * 1000, 1),
            }
        finally:
            stack.stop()


def _wait_ready(stack: LocalStack, influx: InfluxV1, cred: tuple[str, str, str], timeout: float = 60) -> None:
    """Publish one probe reading until it is stored: the subscription and the pipeline are live."""
    assert stack.mosquitto
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publish_load([cred], stack.mosquitto.host, stack.mosquitto.port, 1)
        for _ in range(20):
            if _stored(influx) > 0:
                return
            time.sleep(0.1)
    raise RuntimeError(f"ingest did not store a probe reading within {timeout:.0f} s; see {stack.root}/ingest.log")
