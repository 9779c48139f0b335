"""The load generator: many devices publishing readings as fast as the broker takes them.

Each device is one `mosquitto_pub -l` process (Debian's mosquitto-clients, written in C)
connected with the device's own credentials; this process writes JSON readings to their
standard input, one line per message, round-robin over the devices. A C client per device
keeps the publishing side cheap, so a benchmark on a small machine measures the broker and
the ingest service rather than the publisher. Credentials go into each process's own 0600
options file, never onto a command line. Every reading's `ts` is the time it was handed
to its publisher, in milliseconds and unique per device, so the time it is stored minus
`ts` is its publish-to-stored latency. Acknowledgements are counted from the clients'
debug output (`received PUBACK (Mid: n, RC:0)`); with `count_acks=False` the clients print
nothing (printing and parsing four debug lines a message took a third of a core) and a
client's exit status 0 stands for "every message acknowledged": at the end of its input
`mosquitto_pub -l` waits for the PUBACK of its last message before it disconnects.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from core.broker_auth import TELEMETRY_TOPIC
from core.services import die_with_parent, find_binary

SAMPLE_VALUES = {
    "soil": lambda i: {"soil_moisture": 20.0 + (i % 200) / 10, "soil_temp_c": 12.5},
    "paddy": lambda i: {"water_level_cm": 5.0 + (i % 50) / 10, "water_temp_c": 18.0},
    "weather": lambda i: {"air_temp_c": 10.0 + (i % 100) / 10, "humidity_pct": 60.0},
    "collar": lambda i: {"body_temp_c": 38.5, "activity": float(i % 500)},
    "barn": lambda i: {"nh3_ppm": 8.0 + (i % 30) / 10, "co2_ppm": 900.0},
}


@dataclass
class LoadResult:
    messages: int = 0
    readings: int = 0
    acked: int = 0  # messages the broker acknowledged with success
    refused: int = 0  # messages acknowledged with a failure reason code (e.g. 135 Not authorized)
    exit_codes: list[int] = field(default_factory=list)
    started: float = 0.0  # time.perf_counter() at the first publish (after the clients connected)
    seconds: float = 0.0  # first publish to the last acknowledgement

    @property
    def readings_per_message(self) -> float:
        return self.readings / self.messages if self.messages else 0.0


class _AckCounter(threading.Thread):
    """Reads all publishers' debug output in one thread and counts PUBACKs by outcome."""

    def __init__(self, procs: list[subprocess.Popen]) -> None:
        super().__init__(daemon=True, name="loadgen-acks")
        self.sel = selectors.DefaultSelector()
        for p in procs:
            assert p.stdout is not None
            os.set_blocking(p.stdout.fileno(), False)
            self.sel.register(p.stdout, selectors.EVENT_READ, bytearray())
        self.open = len(procs)
        self.acked = 0
        self.refused = 0

    def run(self) -> None:
        while self.open:
            for key, _ in self.sel.select(0.5):
                chunk = key.fileobj.read(65536)  # type: ignore[union-attr]
                if not chunk:
                    self.sel.unregister(key.fileobj)
                    self.open -= 1
                    chunk = b"\n"
                buf: bytearray = key.data
                buf += chunk
                cut = buf.rfind(b"\n") + 1
                lines, buf[:] = bytes(buf[:cut]), buf[cut:]
                pubacks = lines.count(b"received PUBACK")
                ok = lines.count(b"RC:0)")
                self.acked += ok
                self.refused += pubacks - ok


def publish_load(
    devices: list[tuple[str, str, str]],
    host: str,
    port: int,
    readings: int,
    per_message: int = 1,
    max_inflight: int = 100,
    rate: float | None = None,
    count_acks: bool = True,
) -> LoadResult:
    """Publish `readings` readings from `devices` [(id, secret, kind)], `per_message` per payload.

    Without `rate` as fast as the broker takes them; with it, paced at `rate` messages per second.
    """
    binary = find_binary("mosquitto_pub")
    result = LoadResult()
    with tempfile.TemporaryDirectory(prefix="village-loadgen-") as tmp:
        procs = []
        for device_id, secret, _kind in devices:
            home = Path(tmp) / device_id
            home.mkdir(mode=0o700)
            opts = home / "mosquitto_pub"
            opts.touch(mode=0o600)
            opts.write_text(f"-u {device_id}\n-P {secret}\n")
            procs.append(
                subprocess.Popen(
                    [
                        binary,
                        "-h",
                        host,
                        "-p",
                        str(port),
                        "-V",
                        "5",
                        "-q",
                        "1",
                        "-M",
                        str(max_inflight),
                        "-l",
                        *(["-d"] if count_acks else []),
                        "-i",
                        device_id,
                        "-t",
                        TELEMETRY_TOPIC.format(device_id=device_id),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE if count_acks else subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    bufsize=0,
                    env={**os.environ, "XDG_CONFIG_HOME": str(home)},
                    preexec_fn=die_with_parent,
                )
            )
        acks = _AckCounter(procs if count_acks else [])
        acks.start()
        time.sleep(0.5)  # let the clients connect
        values = [SAMPLE_VALUES[kind] for _id, _s, kind in devices]
        last_ts = [0] * len(devices)
        seqs = [0] * len(devices)
        start = result.started = time.perf_counter()
        n = len(procs)
        i = 0
        while result.readings < readings:
            if rate and i % 50 == 0 and (ahead := i / rate - (time.perf_counter() - start)) > 0:
                time.sleep(ahead)
            d = i % n
            k = min(per_message, readings - result.readings)
            now = int(time.time() * 1000)
            batch = []
            for j in range(k):
                ts = max(now - (k - 1 - j), last_ts[d] + 1)
                last_ts[d] = ts
                seqs[d] += 1
                batch.append({"ts": ts, "seq": seqs[d], "values": values[d](i)})
            stdin = procs[d].stdin
            assert stdin is not None
            stdin.write(orjson.dumps(batch[0] if k == 1 else batch) + b"\n")
            result.messages += 1
            result.readings += k
            i += 1
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()  # mosquitto_pub exits once every message is acknowledged
        result.exit_codes = [p.wait(timeout=300) for p in procs]
        result.seconds = time.perf_counter() - start
        acks.join(30)
        result.acked, result.refused = acks.acked, acks.refused
        if not count_acks:  # exit status 0: all of that client's messages were acknowledged
            sent = [0] * n
            for j in range(result.messages):
                sent[j % n] += 1
            result.acked = sum(c for c, code in zip(sent, result.exit_codes, strict=True) if code == 0)
    return result
