"""Run simulated devices against a real MQTT broker, each with its own credentials.

One thread drives every client of a shard: paho's external-loop interface (`loop_read`,
`loop_write`, `loop_misc`) on non-blocking sockets watched by one `selectors` selector, and a
heap of due messages. `processes > 1` splits the devices over that many worker processes.

Simulated time runs `speed` times faster than real time and ends at "now" when the run has a
duration, so no reading carries a timestamp in the future. Device `d` sends the messages of
`faults.messages(d.id, d.kind, device_start_ms(...), seed=seed, rates=rates)` in order, so a
run's payloads can be regenerated from its report and the seed.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import multiprocessing
import queue
import random
import resource
import selectors
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.devices import MODELS, default_interval_ms
from simulators.faults import FAULTS, FaultRates, Message, messages

TOPIC = "v1/devices/{device_id}/telemetry"
NOT_AUTHORIZED = 135  # MQTT 5 reason code
BAD_CREDENTIALS = 134


@dataclass(frozen=True)
class DeviceCredential:
    """A provisioned device as its own credential store has it."""

    id: str
    kind: str
    secret: str


def load_credentials(path: Path | str) -> list[DeviceCredential]:
    """Read the devices' credential file: a JSON list of `{"id", "kind", "secret"}` objects."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of devices")
    out = []
    for i, item in enumerate(data):
        try:
            out.append(DeviceCredential(str(item["id"]), str(item["kind"]), str(item["secret"])))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: entry {i} lacks id, kind or secret") from e
    return out


def device_start_ms(base_start_ms: int, device_id: str, kind: str, seed: int | str) -> int:
    """A device's first reading time: the run's start plus a per-device phase within one interval."""
    interval = default_interval_ms(kind)
    return base_start_ms + int(random.Random(f"{seed}:{device_id}:phase").random() * interval)


def schedule(
    device_id: str,
    kind: str,
    seed: int | str,
    speed: float,
    interval_s: float | None,
    duration: float | None,
    now_ms: int,
) -> tuple[int, int, float]:
    """(simulated time at the run's real start, first reading time, simulated speed) of a device.

    With a duration, simulated time ends at `now_ms`; without, it starts there.
    """
    dev_speed = default_interval_ms(kind) / 1000 / interval_s if interval_s else speed
    base = now_ms - int((duration or 0.0) * dev_speed * 1000)
    return base, device_start_ms(base, device_id, kind, seed), dev_speed


COUNTS = (
    "devices",
    "connected",
    "refused_connections",
    "connect_errors",
    "unknown_devices",
    "unknown_refused",
    "unknown_accepted",
    "published",
    "acked",
    "refused",
    "failed",
    "readings",
    "disconnects",
)


@dataclass
class SimulationReport:
    """What a run sent and how the broker answered."""

    devices: int = 0
    connected: int = 0
    refused_connections: int = 0  # provisioned devices whose CONNECT was refused
    connect_errors: int = 0  # TCP-level failures
    unknown_devices: int = 0
    unknown_refused: int = 0  # expected: the broker refuses devices it does not know
    unknown_accepted: int = 0  # a security problem if ever non-zero
    published: int = 0  # messages handed to the broker
    acked: int = 0  # PUBACK with a success reason code
    refused: int = 0  # PUBACK "Not authorized"
    failed: int = 0  # other PUBACK failures, or publish errors
    readings: int = 0  # readings carried by the published messages
    disconnects: int = 0  # unexpected disconnections during the run
    by_fault: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, int] = field(default_factory=dict)
    sim_start_ms: int = 0
    now_ms: int = 0  # the run's reference time (simulated time ends here when the run has a duration)
    speed: float = 1.0
    elapsed_s: float = 0.0

    def merge(self, other: SimulationReport) -> None:
        """Add another shard's counts to this report."""
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for attr in ("by_fault", "by_kind"):
            c = Counter(getattr(self, attr))
            c.update(getattr(other, attr))
            setattr(self, attr, dict(c))
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)

    @property
    def pending(self) -> int:
        """Published messages without an answer from the broker."""
        return self.published - self.acked - self.refused - self.failed

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pending": self.pending}


class _Device:
    __slots__ = ("client", "cred", "done", "msg", "reconnect_at", "speed", "state", "stream", "t0", "unknown")

    def __init__(self, cred: DeviceCredential, unknown: bool) -> None:
        self.cred = cred
        self.unknown = unknown
        self.client: mqtt.Client | None = None
        self.state = "new"  # new, connecting, connected, refused, closed
        self.stream: Iterator[Message] = iter(())
        self.msg: Message | None = None
        self.speed = 1.0
        self.t0 = 0  # simulated ms mapped to the run's real start
        self.done = False
        self.reconnect_at = 0.0


class _Shard:
    """One thread driving many MQTT clients."""

    def __init__(
        self,
        creds: Sequence[DeviceCredential],
        unknown: int,
        host: str,
        port: int,
        seed: int | str,
        rates: FaultRates,
        speed: float,
        interval_s: float | None,
        duration: float | None,
        base_now_ms: int,
        keepalive: int,
    ) -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self.duration = duration
        self.sel = selectors.DefaultSelector()
        self.report = SimulationReport(devices=len(creds), unknown_devices=unknown, speed=speed)
        self.by_fault: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.stopping = False
        self.devices: list[_Device] = []
        self.report.sim_start_ms = base_now_ms - int((duration or 0.0) * speed * 1000)
        self.report.now_ms = base_now_ms
        for cred in creds:
            if cred.kind not in MODELS:
                raise ValueError(f"device {cred.id}: no simulator for kind {cred.kind!r}")
            d = _Device(cred, unknown=False)
            d.t0, start, d.speed = schedule(cred.id, cred.kind, seed, speed, interval_s, duration, base_now_ms)
            d.stream = messages(cred.id, cred.kind, start, seed=seed, rates=rates)
            self.devices.append(d)
        rng = random.Random(f"{seed}:unknown")
        for _ in range(unknown):
            dev_id = f"unknown-{rng.getrandbits(48):012x}"
            cred = DeviceCredential(dev_id, "soil", f"{rng.getrandbits(128):032x}")
            self.devices.append(_Device(cred, unknown=True))

    # paho callbacks (userdata is the _Device)
    def _on_connect(self, client: mqtt.Client, d: _Device, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            d.state = "refused"
            d.done = True
            if d.unknown:
                self.report.unknown_refused += 1
            else:
                self.report.refused_connections += 1
            return
        if d.unknown:
            self.report.unknown_accepted += 1
            d.done = True
            client.disconnect()
            return
        if d.state != "reconnecting":
            self.report.connected += 1
        d.state = "connected"

    def _on_disconnect(self, client: mqtt.Client, d: _Device, flags: Any, rc: Any, props: Any = None) -> None:
        if d.state == "connected" and not self.stopping:
            self.report.disconnects += 1
            d.state = "reconnecting"
            d.reconnect_at = time.monotonic() + 1.0
        elif d.state not in ("refused", "reconnecting"):
            d.state = "closed"

    def _on_publish(self, client: mqtt.Client, d: _Device, mid: int, rc: Any, props: Any = None) -> None:
        if not rc.is_failure:
            self.report.acked += 1
        elif rc.value == NOT_AUTHORIZED:
            self.report.refused += 1
        else:
            self.report.failed += 1

    def _on_socket_open(self, client: mqtt.Client, d: _Device, sock: Any) -> None:
        self.sel.register(sock, selectors.EVENT_READ, client)

    def _on_socket_close(self, client: mqtt.Client, d: _Device, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)

    def _on_register_write(self, client: mqtt.Client, d: _Device, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _on_unregister_write(self, client: mqtt.Client, d: _Device, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.modify(sock, selectors.EVENT_READ, client)

    def _client(self, d: _Device) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=d.cred.id, protocol=mqtt.MQTTv5, userdata=d)
        c.username_pw_set(d.cred.id, d.cred.secret)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        return c

    def _connect(self, d: _Device) -> None:
        d.client = self._client(d)
        try:
            d.client.connect(self.host, self.port, keepalive=self.keepalive)
            d.state = "connecting"
        except OSError:
            self.report.connect_errors += 1
            d.state = "closed"
            d.done = True

    def _pump(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            client: mqtt.Client = key.data
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE and client.socket() is key.fileobj:
                client.loop_write()

    def _publish(self, d: _Device, msg: Message) -> None:
        assert d.client is not None
        info = d.client.publish(TOPIC.format(device_id=d.cred.id), msg.payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.report.failed += 1
        self.report.published += 1
        self.report.readings += msg.readings
        self.by_kind[d.cred.kind] += 1
        for f in msg.faults:
            self.by_fault[f] += 1

    def run(self, stop: Any) -> SimulationReport:
        t_start = time.monotonic()
        end = t_start + self.duration if self.duration else float("inf")
        heap: list[tuple[float, int, _Device]] = []
        tie = itertools.count()
        for d in self.devices:
            self._connect(d)
            self._pump(0)  # keep up with CONNACKs while connecting thousands
            if not d.unknown and not d.done:
                d.msg = next(d.stream, None)
                if d.msg is not None:
                    due = t_start + (d.msg.send_ms - d.t0) / 1000 / d.speed
                    heapq.heappush(heap, (due, next(tie), d))
        last_misc = time.monotonic()
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= end:
                    break
                sent = 0
                while heap and heap[0][0] <= now and sent < 2000:
                    _, _, d = heapq.heappop(heap)
                    if d.done or d.msg is None:
                        continue
                    if d.state != "connected":  # not yet (or no longer) connected: try again shortly
                        heapq.heappush(heap, (now + 0.05, next(tie), d))
                        continue
                    self._publish(d, d.msg)
                    sent += 1
                    d.msg = next(d.stream, None)
                    if d.msg is not None:
                        heapq.heappush(heap, (t_start + (d.msg.send_ms - d.t0) / 1000 / d.speed, next(tie), d))
                timeout = 0.0 if sent >= 2000 else min(0.2, max(0.0, (heap[0][0] if heap else now + 0.2) - now))
                self._pump(min(timeout, max(0.0, end - now)))
                if now - last_misc >= 1.0:
                    last_misc = now
                    self._misc(now)
            self._drain(time.monotonic() + 5.0)
        finally:
            self._close()
        r = self.report
        r.by_fault = {f: self.by_fault[f] for f in FAULTS if self.by_fault[f]}
        r.by_kind = dict(self.by_kind)
        r.elapsed_s = time.monotonic() - t_start
        return r

    def _misc(self, now: float) -> None:
        for d in self.devices:
            c = d.client
            if c is None:
                continue
            if d.state == "reconnecting" and now >= d.reconnect_at:
                try:
                    c.reconnect()
                except OSError:
                    d.reconnect_at = now + 2.0
                continue
            if c.socket() is not None:
                c.loop_misc()

    def _drain(self, deadline: float) -> None:
        """Wait for the broker to answer what was published (bounded by `deadline`)."""
        while self.report.pending > 0 and time.monotonic() < deadline:
            self._pump(0.05)

    def _close(self) -> None:
        self.stopping = True
        for d in self.devices:
            if d.client is not None and d.client.socket() is not None:
                d.client.disconnect()
        deadline = time.monotonic() + 2.0
        while self.sel.get_map() and time.monotonic() < deadline:
            self._pump(0.05)
        for d in self.devices:
            if d.client is not None and d.client.socket() is not None:
                d.client.loop_misc()
                sock = d.client.socket()
                if sock is not None:
                    self._on_socket_close(d.client, d, sock)
                    sock.close()
        self.sel.close()


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _shard_main(kwargs: dict[str, Any], stop: Any, out: Any) -> None:
    """Worker process body: run one shard and put its report on `out`."""
    _raise_fd_limit(len(kwargs["creds"]) + kwargs["unknown"] + 64)
    out.put(_Shard(**kwargs).run(stop))


def run(
    credentials: Sequence[DeviceCredential] | Path | str,
    host: str = "127.0.0.1",
    port: int = 1883,
    duration: float | None = 60.0,
    seed: int | str = 0,
    speed: float = 60.0,
    interval_s: float | None = None,
    rates: FaultRates | None = None,
    unknown_devices: int = 0,
    stop: threading.Event | None = None,
    processes: int = 1,
    keepalive: int = 60,
    now_ms: int | None = None,
) -> SimulationReport:
    """Simulate the devices of `credentials` over MQTT until `duration` seconds pass or `stop` is set.

    `speed` is simulated seconds per real second (each kind reports at its catalogue interval
    in simulated time); `interval_s`, when given, makes every device send once per that many
    real seconds instead. With a duration, simulated time ends at `now_ms` (default: now).
    Blocks; call it from a thread with a `stop` event to run it in the background.
    """
    creds = load_credentials(credentials) if isinstance(credentials, Path | str) else list(credentials)
    if speed <= 0 or (interval_s is not None and interval_s <= 0):
        raise ValueError("speed and interval must be positive")
    stop = stop or threading.Event()
    base_now = now_ms if now_ms is not None else int(time.time() * 1000)
    common = dict(
        host=host,
        port=port,
        seed=seed,
        rates=rates or FaultRates(),
        speed=speed,
        interval_s=interval_s,
        duration=duration,
        base_now_ms=base_now,
        keepalive=keepalive,
    )
    processes = max(1, min(processes, len(creds) or 1))
    if processes == 1:
        _raise_fd_limit(len(creds) + unknown_devices + 64)
        return _Shard(creds, unknown_devices, **common).run(stop)  # type: ignore[arg-type]
    ctx = multiprocessing.get_context("spawn")
    mp_stop = ctx.Event()
    out = ctx.Queue()
    procs = []
    for i in range(processes):
        kwargs = {"creds": creds[i::processes], "unknown": unknown_devices if i == 0 else 0, **common}
        p = ctx.Process(target=_shard_main, args=(kwargs, mp_stop, out), daemon=True)
        p.start()
        procs.append(p)
    reports: list[SimulationReport] = []
    try:
        while len(reports) < processes:
            if stop.is_set():
                mp_stop.set()
            try:
                reports.append(out.get(timeout=0.2))
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and out.empty():
                    break
    finally:
        mp_stop.set()
        for p in procs:
            p.join(timeout=10)
    total = SimulationReport(sim_start_ms=base_now - int((duration or 0) * speed * 1000), now_ms=base_now, speed=speed)
    for r in reports:
        total.merge(r)
    if len(reports) < processes:
        raise RuntimeError(f"{processes - len(reports)} simulator process(es) failed")
    return total


def run_in_background(**kwargs: Any) -> tuple[threading.Thread, threading.Event, list[SimulationReport]]:
    """Start `run(**kwargs)` in a daemon thread; set the event to stop it, the list gets the report."""
    stop = threading.Event()
    result: list[SimulationReport] = []
    thread = threading.Thread(
        target=lambda: result.append(run(stop=stop, **kwargs)), name="village-simulator", daemon=True
    )
    thread.start()
    return thread, stop, result
