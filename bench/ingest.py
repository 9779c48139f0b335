"""`village bench ingest`: readings per second stored end to end, readings lost, latency.

Starts its own stack (mosquitto, InfluxDB, ingest replicas) in a temporary folder, registers
and provisions many devices, publishes a fixed number of readings through mosquitto from one
MQTT 5 connection per device (`simulators.loadgen`, which counts every PUBACK and its reason
code), and waits until InfluxDB holds them all. Figures of a run:

- acked: messages (and readings) whose PUBACK carried a reason code < 128; refused, unacked and
  the publishers that failed (refused connection, disconnect, error reason codes) beside them;
- stored: readings counted in InfluxDB; rejected: readings dead-lettered (registry database);
- lost: acknowledged readings minus stored minus rejected;
- published_per_s: messages written by the publishers / seconds from the first to the last;
- stored_per_s: readings stored / seconds from the first publish to the last reading stored;
- paced runs: device-to-queryable latency p50/p99 of sentinel readings (`SentinelPoller`), from
  the moment a sentinel was due at its device to the first answer of InfluxDB that holds it;
- cpu_s: CPU seconds of each part over the run (from /proc), and cores_used = their sum / seconds;
- stages: where a reading's time goes: ingest's batch age limit, the replicas' mean publish-to-stored
  lag, InfluxDB's write requests (count, points per write, mean duration), queries and GC pauses.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from core.db import get_engine, migrate, session_scope
from core.influx import InfluxV1
from core.localstack import LocalStack
from core.models import DeadLetter
from core.provisioning import provision
from core.registry_io import import_data
from core.services import free_ports
from simulators.loadgen import SAMPLE_VALUES, SENTINELS, LoadResult, publish_load

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0.0 where it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float, missing: int = 0) -> float | None:
    """Nearest-rank percentile; `missing` values count as infinitely late (then None if reached)."""
    n = len(values) + missing
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    ordered = sorted(values)
    return ordered[rank - 1] if rank <= len(ordered) else None


class SentinelPoller(threading.Thread):
    """Asks InfluxDB for the sentinel readings still awaited, every `interval` s, and times each.

    The publisher calls `expect` for every sentinel with the wall time it was due at its device.
    One HTTP request per poll carries one InfluxQL statement per device kind, bounded to the series
    (devices) and the time range of the sentinels awaited: InfluxDB 1.x reads every cached value of
    each series a query touches, so a poll of all 200 devices' series took a quarter of a core. A sentinel
    counts as queryable at the moment the first answer holding it arrived (so the figure is late
    by at most one poll interval plus one query); one not seen within `give_up_s` counts as missing.
    """

    def __init__(self, url: str, db: str, interval: float = 0.05, give_up_s: float = 60.0) -> None:
        super().__init__(daemon=True, name="sentinel-poller")
        self.url, self.db, self.interval, self.give_up_s = url, db, interval, give_up_s
        self._new: deque[tuple[str, str, int, float]] = deque()
        self._pending: dict[tuple[str, int], tuple[str, float]] = {}
        self.finish = threading.Event()  # set when no more sentinels will be published
        self.expected = 0
        self.missing = 0
        self.latencies: list[float] = []
        self.timeline: list[tuple[float, float]] = []  # (due, latency) of each sentinel seen
        self.queries: list[str] = []
        self.query_s = 0.0
        self.cpu_s = 0.0

    def expect(self, device_id: str, kind: str, ts_ms: int, due: float) -> None:
        self._new.append((device_id, kind, ts_ms, due))  # deque.append: safe from another thread

    def _statement(self, kind: str, devices: set[str], lo: int, hi: int) -> str:
        metric, marker = SENTINELS[kind]
        series = " OR ".join(f"\"device\" = '{d}'" for d in sorted(devices))
        return (
            f'SELECT "{metric}", "device" FROM "{kind}" '
            f'WHERE ({series}) AND "{metric}" = {marker!r} AND time >= {lo}ms AND time <= {hi}ms'
        )

    def _poll(self, http: httpx.Client) -> None:
        windows: dict[str, tuple[set[str], int, int]] = {}
        for (device, ts), (kind, _due) in self._pending.items():
            devices, lo, hi = windows.get(kind, (set(), ts, ts))
            devices.add(device)
            windows[kind] = (devices, min(lo, ts), max(hi, ts))
        q = ";".join(self._statement(kind, *window) for kind, window in sorted(windows.items()))
        self.queries.append(q)
        t0 = time.perf_counter()
        answer = http.post("/query", data={"db": self.db, "q": q, "epoch": "ms"})
        seen_at = time.time()
        self.query_s += time.perf_counter() - t0
        answer.raise_for_status()
        for result in answer.json().get("results", []):
            for series in result.get("series", []):
                cols = series["columns"]
                t, dev = cols.index("time"), cols.index("device")
                for row in series["values"]:
                    hit = self._pending.pop((row[dev], row[t]), None)
                    if hit is not None:
                        self.latencies.append(seen_at - hit[1])
                        self.timeline.append((hit[1], seen_at - hit[1]))

    def run(self) -> None:
        cpu0 = time.thread_time()
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while True:
                finished = self.finish.is_set()  # read first: whatever was expected before is drained below
                while self._new:
                    device_id, kind, ts, due = self._new.popleft()
                    self._pending[(device_id, ts)] = (kind, due)
                    self.expected += 1
                if self._pending:
                    self._poll(http)
                    cutoff = time.time() - self.give_up_s
                    for key in [k for k, (_kind, due) in self._pending.items() if due < cutoff]:
                        del self._pending[key]
                        self.missing += 1
                elif finished:
                    break
                time.sleep(self.interval)
        self.cpu_s = time.thread_time() - cpu0

    def influx_cpu_per_query(self, influx_pid: int, http: httpx.Client, sample: int = 200) -> float:
        """InfluxDB's CPU seconds per poll, measured by replaying polls of the run after it (idle)."""
        picked = self.queries[:: max(1, len(self.queries) // sample)][:sample]
        if not picked:
            return 0.0

        def idle_rate() -> float:  # what InfluxDB spends meanwhile on its own (compactions) is subtracted
            cpu, t = cpu_seconds(influx_pid), time.perf_counter()
            time.sleep(1.0)
            return (cpu_seconds(influx_pid) - cpu) / (time.perf_counter() - t)

        before_idle = idle_rate()
        cpu, t = cpu_seconds(influx_pid), time.perf_counter()
        for q in picked:
            http.post("/query", data={"db": self.db, "q": q, "epoch": "ms"}).raise_for_status()
        spent, took = cpu_seconds(influx_pid) - cpu, time.perf_counter() - t
        spent -= (before_idle + idle_rate()) / 2 * took
        return max(0.0, spent) / len(picked)


def _stored(client: InfluxV1) -> int:
    return sum(client.count(kind, next(iter(SAMPLE_VALUES[kind](0)))) for kind in KINDS)


def _stage_snapshot(stack: LocalStack, ports: list[int]) -> dict[str, float]:
    """Counters that say where a reading's time goes: InfluxDB's write requests (its /debug/vars) and
    the replicas' publish-to-stored lag (sum and count of their histogram: a mean, no quantiles)."""
    assert stack.influxd
    out = {"lag_sum": 0.0, "lag_count": 0.0}
    for port in ports:
        for line in _METRICS.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
            if line.startswith("village_ingest_store_lag_seconds_sum"):
                out["lag_sum"] += float(line.rsplit(" ", 1)[1])
            elif line.startswith("village_ingest_store_lag_seconds_count"):
                out["lag_count"] += float(line.rsplit(" ", 1)[1])
    stats = _METRICS.get(f"{stack.influxd.url}/debug/vars").json()
    httpd = next(v["values"] for k, v in stats.items() if k.startswith("httpd"))
    for key in ("writeReq", "writeReqDurationNs", "pointsWrittenOK", "queryReq", "queryReqDurationNs"):
        out[key] = float(httpd[key])
    out["gc_pause_ns"] = float(stats["memstats"]["PauseTotalNs"])
    return out


def _stages(before: dict[str, float], after: dict[str, float], batch_ms: int) -> dict[str, Any]:
    d = {k: after[k] - before[k] for k in before}
    writes, queries = d["writeReq"] or 1, d["queryReq"] or 1
    return {
        "ingest_batch_ms": batch_ms,  # INGEST_BATCH_MS: a batch is written once its first message is this old
        "ingest_lag_ms_mean": round(d["lag_sum"] / d["lag_count"] * 1000, 1) if d["lag_count"] else None,
        "influx_writes": int(d["writeReq"]),
        "influx_points_per_write": round(d["pointsWrittenOK"] / writes),
        "influx_write_ms_mean": round(d["writeReqDurationNs"] / writes / 1e6, 1),
        "influx_queries": int(d["queryReq"]),
        "influx_query_ms_mean": round(d["queryReqDurationNs"] / queries / 1e6, 1),
        "influx_gc_pause_ms": round(d["gc_pause_ns"] / 1e6, 1),
    }


def _cpu_snapshot(stack: LocalStack) -> dict[str, float]:
    assert stack.mosquitto and stack.mosquitto.proc and stack.influxd and stack.influxd.proc
    return {
        "mosquitto": cpu_seconds(stack.mosquitto.proc.pid),
        "ingest": sum(cpu_seconds(p.pid) for p in stack.ingest_procs),
        "influxd": cpu_seconds(stack.influxd.proc.pid),
        "bench": time.process_time(),  # this process: the publishers, the poller, the progress checks
    }


def run(
    readings: int = 200_000,
    devices: int = 200,
    per_message: int = 1,
    replicas: int = 2,
    timeout: float = 600.0,
    keep: Path | None = None,
    rate: float | None = None,
    sentinel_devices: int = 4,
    poll_interval: float = 0.05,
) -> dict[str, Any]:
    """One run on a fresh stack: flood (no `rate`) or paced at `rate` messages/s with sentinels."""
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
            assert stack.mosquitto and stack.influxd and stack.influxd.proc
            ports = [metrics_base + i for i in range(replicas)]
            stack.start_ingest(replicas, INGEST_METRICS_PORT=str(metrics_base))
            influx = stack.influx()  # one client for all the counting below
            _wait_ready(stack, influx, creds[0], ports)
            baseline = _stored(influx)
            poller = None
            if rate and sentinel_devices and per_message == 1:
                poller = SentinelPoller(stack.influxd.url, stack.influx_db, interval=poll_interval)
                poller.start()
            cpu0, stages0 = _cpu_snapshot(stack), _stage_snapshot(stack, ports)
            load = publish_load(
                creds,
                stack.mosquitto.host,
                stack.mosquitto.port,
                readings,
                per_message,
                rate=rate,
                sentinel_devices=sentinel_devices if poller else 0,
                on_sentinel=poller.expect if poller else None,
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
            cpu1, stages1 = _cpu_snapshot(stack), _stage_snapshot(stack, ports)
            stored = _stored(influx)  # the figure itself is counted in InfluxDB
            while stored < expected and time.monotonic() < deadline:  # should not happen: then time it
                time.sleep(0.2)
                stored = _stored(influx)
                elapsed = time.perf_counter() - t0
            with session_scope(engine) as session:
                rejected = int(session.exec(select(func.coalesce(func.sum(1 + DeadLetter.more), 0))).one()[0])
            stored -= baseline
            cpu = {part: round(cpu1[part] - cpu0[part], 2) for part in cpu0}
            figures = _figures(load, stored, rejected, elapsed, per_message, rate, devices, replicas, cpu)
            figures["stages"] = _stages(stages0, stages1, stack.settings().ingest_batch_ms)
            if poller:
                poller.finish.set()
                poller.join(poller.give_up_s + 30)
                with httpx.Client(base_url=stack.influxd.url, timeout=10) as http:
                    per_query = poller.influx_cpu_per_query(stack.influxd.proc.pid, http)
                figures |= _latency(poller, per_query, elapsed)
            return figures
        finally:
            stack.stop()


def _figures(
    load: LoadResult,
    stored: int,
    rejected: int,
    elapsed: float,
    per_message: int,
    rate: float | None,
    devices: int,
    replicas: int,
    cpu: dict[str, float],
) -> dict[str, Any]:
    return {
        "bench": "ingest",
        "payload": "single" if per_message == 1 else f"array of {per_message}",
        "paced_messages_per_s": round(rate) if rate else None,
        "devices": devices,
        "ingest_replicas": replicas,
        "published": load.messages,
        "readings": load.readings,
        "acked": load.acked,  # messages with a PUBACK reason code < 128
        "acked_readings": load.acked_readings,
        "refused": load.refused,  # messages with a PUBACK reason code >= 128
        "unacked": load.unacked,
        "puback_reason_codes": {str(code): n for code, n in load.reason_codes.items()},
        "publishers_failed": len(load.failures),
        "publisher_failures": load.failures[:10],
        "stored": stored,
        "rejected": rejected,
        "lost": load.acked_readings - stored - rejected,
        "published_per_s": round(load.messages / load.publish_seconds) if load.publish_seconds else None,
        "publisher_behind_ms_max": load.behind_ms_max if rate else None,
        "publisher_cpu_s": load.cpu_s,  # of cpu_s["bench"]
        "stored_per_s": round(stored / elapsed),
        "seconds": round(elapsed, 2),
        "cores": os.cpu_count(),
        "cpu_s": cpu,
        "cores_used": round(sum(cpu.values()) / elapsed, 2),
        "cores_note": "publishers, mosquitto, ingest and InfluxDB share these cores; cpu_s per part over the run",
    }


def _latency(poller: SentinelPoller, influx_cpu_per_query: float, elapsed: float) -> dict[str, Any]:
    lat, missing = poller.latencies, poller.missing

    def ms(q: float) -> float | None:
        v = percentile(lat, q, missing)
        return None if v is None else round(v * 1000, 1)

    polls = len(poller.queries)
    influx_cpu = influx_cpu_per_query * polls
    return {
        "latency": "device to queryable in InfluxDB, from sentinel readings",
        "sentinels": poller.expected,
        "sentinels_missing": missing,
        "latency_ms_p50": ms(0.5),
        "latency_ms_p99": ms(0.99),
        "latency_ms_max": round(max(lat) * 1000, 1) if lat and not missing else None,
        "latency_ms_p99_per_tenth": _per_tenth(poller.timeline),
        "poll_ms": round(poller.interval * 1000),
        "polls": polls,
        "poll_query_ms_mean": round(poller.query_s / polls * 1000, 1) if polls else None,
        "poller_cpu_s": round(poller.cpu_s, 2),
        "poller_influx_cpu_s": round(influx_cpu, 2),
        "poller_cores": round((poller.cpu_s + influx_cpu) / elapsed, 3),
    }


def _per_tenth(timeline: list[tuple[float, float]]) -> list[float | None]:
    """p99 of the sentinels due in each tenth of the run: flat if the stack kept up, rising if it fell behind."""
    if not timeline:
        return []
    first, last = min(t for t, _ in timeline), max(t for t, _ in timeline)
    slices: list[list[float]] = [[] for _ in range(10)]
    for due, latency in timeline:
        slices[min(9, int((due - first) / ((last - first) or 1) * 10))].append(latency)
    return [None if (v := percentile(x, 0.99)) is None else round(v * 1000) for x in slices]


def _subscribed(port: int) -> bool:
    try:
        text = _METRICS.get(f"http://127.0.0.1:{port}/metrics").text
    except httpx.HTTPError:
        return False
    return any(line.startswith("village_ingest_subscribed ") and line.endswith(" 1.0") for line in text.splitlines())


def _wait_ready(
    stack: LocalStack, influx: InfluxV1, cred: tuple[str, str, str], ports: list[int], timeout: float = 120
) -> None:
    """Wait until every replica has subscribed (its metrics say so), then publish one probe reading
    until it is stored: the subscriptions and the pipeline are live."""
    assert stack.mosquitto
    deadline = time.monotonic() + timeout
    while not all(_subscribed(p) for p in ports):
        if time.monotonic() > deadline:
            raise RuntimeError(f"ingest replicas did not subscribe within {timeout:.0f} s; see {stack.root}/ingest.log")
        time.sleep(0.2)
    while time.monotonic() < deadline:
        publish_load([cred], stack.mosquitto.host, stack.mosquitto.port, 1)
        for _ in range(20):
            if _stored(influx) > 0:
                return
            time.sleep(0.1)
    raise RuntimeError(f"ingest did not store a probe reading within {timeout:.0f} s; see {stack.root}/ingest.log")
