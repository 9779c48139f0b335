"""`village bench api`: scans of a county-sized world, cold, warm and signed in, under concurrent load.

Starts the local stack (InfluxDB, anvil; mosquitto comes with it) and a PostgreSQL server (the
deployment database: its change notifications drive verification) in a temporary folder, grows
the world (bench/world.py: the demo county plus `lots` retail lots, each with a paddy lot, growth
summary and daily digests from readings in InfluxDB, every record anchored in one window on
anvil), then runs the API as in production (`village serve`, 2 uvicorn workers, the production
rate limit and verification settings) behind a trusted proxy (API_TRUSTED_PROXIES=127.0.0.1):
wrk's Lua script (LUA) sends each request with the X-Forwarded-For of one of `addresses`
simulated phones, so the per-address rate limit applies as it would to phones behind the proxy.

- cold: each lot scanned once, in a shuffled order (first scans: the answer comes at once, with
  "checking", while the lot is verified in the background), once the API's start-up work (indicators,
  dashboard sections and lot codes computed in the background) is done (`startup_settle_s`);
- then every lot's /verify (it waits for the lot's check): the counts by status; the run fails
  unless every lot is "verified";
- warm: a Zipf mix (s = ZIPF_S) over every lot, in the MIX of pages, Digital Links and JSON, measured
  after `warmup_s` seconds of the same mix (not measured: the caches fill as in a deployment that has
  been scanned for a while; their settings are production's);
- dashboard: the county administrator's and a village operator's dashboard JSON and time series.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session, col, select

from core.db import get_engine, migrate
from core.localstack import LocalStack
from core.models import Device, Plot
from core.services import ServiceError, die_with_parent, free_port, postgres, wait_for_port
from core.settings import Settings

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
    try:
        wait_for_port("127.0.0.1", port, timeout=240, proc=proc)  # 2 workers importing on a busy machine
    except ServiceError as e:
        raise ServiceError(f"{e}; the API's log ends:\n{log_file.read_text()[-3000:]}") from e
    return proc


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children that are still running."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def settle(pid: int, *, busy_below: float = 0.1, quiet_s: int = 3, timeout_s: float = 180) -> float:
    """Wait until the API's processes have finished their start-up work (indicators, dashboard sections,
    lot codes warmed in the background): less than `busy_below` of a core for `quiet_s` seconds running.
    Returns the seconds waited."""
    started = time.monotonic()
    quiet, last = 0, _tree_cpu_s(pid)
    while quiet < quiet_s and time.monotonic() - started < timeout_s:
        time.sleep(1.0)
        now = _tree_cpu_s(pid)
        quiet = quiet + 1 if now - last < busy_below else 0
        last = now
    return round(time.monotonic() - started, 1)


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


LUA = r"""
-- village bench api: one request per call, from a list of "path<TAB>accept<TAB>accept-language<TAB>authorization"
-- lines; mode "seq" walks the list once in order (first scans), "zipf" draws from it with the weights given
-- (one per line, cumulative in the file's 5th column). Each request comes from a simulated phone
-- (X-Forwarded-For, honoured from the trusted proxy 127.0.0.1) out of `addresses`, and takes gzip
-- as phones' browsers do.
local lines, cum, n, mode, addresses, counter = {}, {}, 0, "seq", 1, 0
function init(args)
  mode = args[2]
  addresses = tonumber(args[3])
  math.randomseed(tonumber(args[4]))
  for line in io.lines(args[1]) do
    local path, accept, lang, auth, w = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$")
    n = n + 1
    local h = {["Accept"] = accept, ["Accept-Language"] = lang, ["Accept-Encoding"] = "gzip, deflate, br"}
    if auth ~= "" then h["Authorization"] = auth end
    lines[n] = {path, h}
    cum[n] = tonumber(w)
  end
end
local function pick()
  if mode == "seq" then
    counter = counter + 1
    return lines[((counter - 1) % n) + 1]
  end
  local r, lo, hi = math.random() * cum[n], 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cum[mid] < r then lo = mid + 1 else hi = mid end
  end
  return lines[lo]
end
function request()
  local e = pick()
  local a = math.random(0, addresses - 1)
  local b1, b2 = math.floor(a / 65536) % 256, math.floor(a / 256) % 256
  e[2]["X-Forwarded-For"] = string.format("10.%d.%d.%d", b1, b2, a % 256)
  return wrk.format("GET", e[1], e[2])
end
"""

# The scan mix: what a phone camera opens (the page under the short code or the GS1 Digital Link) and
# what apps read (the JSON); pages in Chinese mostly.
MIX = (("page", 0.45), ("digital_link", 0.35), ("json", 0.20))
LANGS = (("zh-CN,zh;q=0.9", 0.8), ("en-US,en;q=0.9", 0.2))
ZIPF_S = 1.1


def scan_lines(codes: list[str], links: list[str], rng: random.Random) -> list[tuple[str, str, str]]:
    """One scan of each lot, its kind and language drawn from MIX and LANGS: (path, accept, accept-language)."""
    out = []
    for code, link in zip(codes, links, strict=True):
        kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        lang = rng.choices([k for k, _ in LANGS], [w for _, w in LANGS])[0]
        if kind == "json":
            out.append((f"/api/v1/trace/{code}", "application/json", lang))
        else:
            out.append((f"/t/{code}" if kind == "page" else link, "text/html", lang))
    return out


def write_script(folder: Path, name: str, rows: list[tuple[str, str, str, str]], weights: list[float]) -> Path:
    script = folder / "scan.lua"
    script.write_text(LUA)
    cum, total = [], 0.0
    for w in weights:
        total += w
        cum.append(total)
    (folder / name).write_text(
        "".join(f"{p}\t{a}\t{lang}\t{auth}\t{c:.9g}\n" for (p, a, lang, auth), c in zip(rows, cum, strict=True))
    )
    return folder / name


def wrk_script(
    base: str, data: Path, mode: str, *, duration_s: int, connections: int, threads: int, addresses: int, seed: int
) -> dict[str, Any]:
    args = [find_wrk(), f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", "--timeout", "5s"]
    args += ["-s", str(data.parent / "scan.lua"), base, "--", str(data), mode, str(addresses), str(seed)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration_s + 60, check=True)
    r = parse_wrk(out.stdout)
    return {**r, "errors": r["errors"] + r["non_2xx"]}


def sign_in(base: str, username: str, password: str) -> str:
    r = httpx.post(f"{base}/api/v1/auth/token", data={"username": username, "password": password}, timeout=30)
    r.raise_for_status()
    return f"Bearer {r.json()['access_token']}"


def verify_all(base: str, codes: list[str], addresses: int, threads: int = 8) -> dict[str, int]:
    """/verify of every lot (it waits for the lot's check), from spread addresses: counts by status."""
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    counts: Counter[str] = Counter()

    def one(i_code: tuple[int, str]) -> str:
        i, code = i_code
        ip = f"10.{(i // 65536) % 256}.{(i // 256) % 256}.{i % 256}"
        with httpx.Client(base_url=base, timeout=300) as c:
            for _ in range(5):
                r = c.get(f"/api/v1/trace/{code}/verify", headers={"X-Forwarded-For": ip})
                if r.status_code == 200:
                    return str(r.json()["status"])
                time.sleep(1)
            return f"http {r.status_code}"

    with ThreadPoolExecutor(threads) as pool:
        for status in pool.map(one, [((i * 7919) % addresses, c) for i, c in enumerate(codes)]):
            counts[status] += 1
    return dict(counts)


def run(
    *,
    lots: int = 10_000,
    seed: int = 12,
    cold_s: int = 10,
    warm_s: int = 10,
    dashboard_s: int = 10,
    connections: int = 32,
    threads: int = 1,
    workers: int = 2,
    warmup_s: int = 20,
    addresses: int = 50_000,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Grow the world (bench/world.py), serve it as in production (rate limit on, clients spread over
    addresses behind a trusted proxy), and measure the three phases: cold (first scans), warm (a Zipf
    mix over every lot) and the signed-in dashboard."""
    from api.demo import ensure_demo_users
    from bench.world import grow

    find_wrk()
    root = keep or Path(tempfile.mkdtemp(prefix="village-bench-api-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user (as root): it must reach its folder
    stack = LocalStack(root).start(chain=True)
    pg = postgres(root / "postgres").start()  # the deployment database: its notifications drive verification
    proc: subprocess.Popen | None = None
    rng = random.Random(seed)
    try:
        db_url = pg.create_database("village")
        migrate(db_url)
        settings = Settings(**{**stack.env(), "DATABASE_URL": db_url})  # type: ignore[arg-type]
        engine = get_engine(db_url)
        t0 = time.perf_counter()
        with stack.influx() as influx:
            world = grow(engine, influx, settings, lots=lots, seed_value=seed)
        setup_s = round(time.perf_counter() - t0, 2)
        password = "bench-" + str(seed) * 4
        with Session(engine) as session:
            ensure_demo_users(session, password)
            session.commit()
            monitored = select(Plot.plot_no, Plot.village_code).join(Device, col(Device.plot_id) == Plot.id)
            plots = session.exec(monitored.order_by(Plot.id)).all()
            plot_of = {  # a monitored plot in each user's area (the village operator's: Beizhengjia village)
                "county": plots[0][0],
                "beizhengjia": next(p for p, v in plots if v == "211122101201"),
            }
        engine.dispose()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            **stack.env(),
            "DATABASE_URL": db_url,
            "API_TRUSTED_PROXIES": "127.0.0.1",
            "TRACE_BASE_URL": base,
            "LOG_LEVEL": "WARNING",
        }
        for k in ("API_RATE_LIMIT_PER_MIN", "API_VERIFY_CACHE_S"):
            env.pop(k, None)  # production values
        proc = start_api(env, port, workers, root / "api.log")
        startup_s = settle(proc.pid)  # its start-up work done: the cold phase measures first scans alone
        scans = scan_lines(world.codes, world.digital_links, rng)
        order = list(range(lots))
        rng.shuffle(order)
        cold_rows = [(*scans[i], "") for i in order]
        cold = write_script(root, "cold.tsv", cold_rows, [1.0] * lots)
        ranks = list(range(lots))
        rng.shuffle(ranks)  # popularity independent of generation order
        warm_rows = [(*scans[i], "") for i in range(lots)]
        warm_data = write_script(root, "warm.tsv", warm_rows, [1.0 / (ranks[i] + 1) ** ZIPF_S for i in range(lots)])
        out: dict[str, Any] = {"bench": "api", "lots": lots}
        kw = {"connections": connections, "threads": threads, "addresses": addresses, "seed": seed}
        out["cold"] = wrk_script(base, cold, "seq", duration_s=cold_s, **kw)
        out["cold"]["lots_scanned"] = min(lots, out["cold"]["requests"])
        t0 = time.perf_counter()
        verification = verify_all(base, world.codes, addresses)  # every lot, scanned or not: all must be verified
        verify_s = round(time.perf_counter() - t0, 2)
        if warmup_s > 0:  # the same mix, not measured
            out["warmup"] = wrk_script(base, warm_data, "zipf", duration_s=warmup_s, **{**kw, "seed": seed + 1})
        out["warm"] = wrk_script(base, warm_data, "zipf", duration_s=warm_s, **kw)
        tokens = {u: sign_in(base, u, password) for u in ("county", "beizhengjia")}
        day = "start=2026-07-01T00:00:00%2B08:00&end=2026-07-04T00:00:00%2B08:00"
        dash_rows = [
            (path, "application/json", "zh-CN", tok)
            for user, tok in tokens.items()
            for path in (
                "/api/v1/dashboard?period=2026-07",
                "/api/v1/dashboard/indicators?period=2026-07",
                "/api/v1/dashboard/devices",
                "/api/v1/dashboard/traceability",
                "/api/v1/dashboard/anchoring",
                f"/api/v1/timeseries?plot={plot_of[user]}&{day}&resolution=1h",
                f"/api/v1/timeseries?plot={plot_of[user]}&{day}&resolution=1d",
            )
        ]
        dash = write_script(root, "dashboard.tsv", dash_rows, [1.0] * len(dash_rows))
        out["dashboard"] = wrk_script(base, dash, "zipf", duration_s=dashboard_s, **kw)
        statuses = ("verified", "pending", "tampered", "unverifiable")
        out["verification"] = {s: verification.get(s, 0) for s in statuses}
        others = {k: v for k, v in verification.items() if k not in statuses}
        if others:
            out["verification"]["other"] = others
        out.update(
            workers=workers,
            connections=connections,
            cores=os.cpu_count(),
            mix={k: w for k, w in MIX},
            zipf_s=ZIPF_S,
            addresses=addresses,
            setup_s={**world.setup_s, "total_s": setup_s},
            leaves=world.seeded.get("leaves"),
            verify_all_s=verify_s,
            startup_settle_s=startup_s,
        )
        return out
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        pg.stop()
        stack.stop()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
