"""Device simulators: determinism, realism of the behaviour models, fault injection, and a run
against a real mosquitto broker."""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from core.broker_auth import hash_secret
from core.catalogue import get_catalogue
from core.services import mosquitto
from simulators.climate import climate_for
from simulators.devices import generate, kinds
from simulators.faults import FaultRates, messages
from simulators.runner import DeviceCredential, run, run_in_background, schedule

CST = timezone(timedelta(hours=8))
HOUR = 3_600_000
DAY = 24 * HOUR


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=CST).timestamp() * 1000)


def hour_of(ts: int) -> int:
    return datetime.fromtimestamp(ts / 1000, CST).hour


def strict_json(payload: bytes) -> object:
    """Parse as strict JSON (NaN and Infinity are not JSON)."""

    def bad(name: str) -> None:
        raise ValueError(name)

    return json.loads(payload, parse_constant=bad)


# -- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["soil", "paddy", "weather", "collar", "barn"])
def test_same_seed_same_readings_different_seed_different(kind: str) -> None:
    start = ms(2025, 6, 1)
    a = list(generate(f"{kind}-0001", kind, start, None, 500, seed=7))
    b = list(generate(f"{kind}-0001", kind, start, None, 500, seed=7))
    c = list(generate(f"{kind}-0001", kind, start, None, 500, seed=8))
    other_device = list(generate(f"{kind}-0002", kind, start, None, 500, seed=7))
    assert a == b
    assert a != c
    assert a != other_device
    assert [r["seq"] for r in a] == list(range(500))
    assert all(isinstance(r["ts"], int) for r in a)


def test_messages_with_faults_are_deterministic() -> None:
    rates = FaultRates(duplicate=0.05, out_of_order=0.05, offline=0.01, malformed=0.05, out_of_range=0.05)
    run1 = [
        (m.send_ms, m.payload, m.faults) for m in messages("barn-0001", "barn", ms(2025, 1, 1), None, 3000, 3, rates)
    ]
    run2 = [
        (m.send_ms, m.payload, m.faults) for m in messages("barn-0001", "barn", ms(2025, 1, 1), None, 3000, 3, rates)
    ]
    run3 = [
        (m.send_ms, m.payload, m.faults) for m in messages("barn-0001", "barn", ms(2025, 1, 1), None, 3000, 4, rates)
    ]
    assert run1 == run2
    assert run1 != run3


# -- realism -------------------------------------------------------------------------------------


@pytest.mark.parametrize("start", [ms(2025, 1, 10), ms(2025, 7, 1)])
def test_values_within_catalogue_ranges(start: int) -> None:
    cat = get_catalogue()
    for kind in kinds():
        metrics = cat.kinds[kind].metrics
        for dev in range(3):
            for r in generate(f"{kind}-{dev}", kind, start, None, 20 * 24 * 6, seed=dev):
                assert set(r["values"]) == set(metrics)
                for name, value in r["values"].items():
                    assert metrics[name].check(value) is None, (kind, name, value)


def test_soil_moisture_dries_between_irrigations_and_jumps_after_rain() -> None:
    seed = 11
    climate = climate_for(seed)
    step = 600_000
    start = ms(2025, 6, 15)
    rain_ups = rain_steps = 0
    dry_windows = dry_falls = 0
    irrigations = 0
    for dev in range(6):
        rs = list(generate(f"soil-{dev}", "soil", start, step, 70 * 144, seed=seed))
        m = [r["values"]["soil_moisture"] for r in rs]
        ts = [r["ts"] for r in rs]
        for i in range(1, len(rs)):
            rain = climate.rain_between(ts[i - 1], ts[i])
            if rain > 0 and i + 6 < len(rs) and climate.rain_between(ts[i - 1] - 6 * HOUR, ts[i - 1]) == 0:
                # the first hour of rain after a dry spell wets the soil
                if climate.rain_between(ts[i - 1], ts[i + 6]) >= 2:
                    rain_steps += 1
                    rain_ups += m[i + 6] > m[i - 1] + 1
            elif rain == 0 and m[i] - m[i - 1] > 5:
                irrigations += 1
        for i in range(0, len(rs) - 72, 72):  # 12-hour windows with no rain and no irrigation
            j = i + 72
            if climate.rain_between(ts[i], ts[j]) == 0 and max(m[k + 1] - m[k] for k in range(i, j)) < 3:
                dry_windows += 1
                dry_falls += m[j] < m[i]
    assert rain_steps >= 10
    assert rain_ups / rain_steps > 0.9
    assert dry_windows > 100
    assert dry_falls / dry_windows > 0.85
    assert irrigations >= 6  # each probe is irrigated at least about once in a dry summer spell


def test_paddy_water_level_follows_the_rice_season() -> None:
    def levels(dev: int, frm: int, to: int) -> list[float]:
        # start in April so the state has run through the season up to the window
        out = []
        for r in generate(f"paddy-{dev}", "paddy", ms(2025, 4, 1), 3_600_000, 200 * 24, seed=5):
            if frm <= r["ts"] < to:
                out.append(r["values"]["water_level_cm"])
        return out

    for dev in range(5):
        june = levels(dev, ms(2025, 6, 5), ms(2025, 6, 28))
        mid_drain = levels(dev, ms(2025, 7, 11), ms(2025, 7, 15))
        august = levels(dev, ms(2025, 8, 5), ms(2025, 8, 25))
        late_sept = levels(dev, ms(2025, 9, 20), ms(2025, 9, 30))
        assert statistics.mean(june) > 4 and min(june) > 1, dev
        assert statistics.mean(mid_drain) < 0, dev
        assert statistics.mean(august) > 2, dev
        assert -5 <= statistics.mean(late_sept) <= 1.5, dev


def test_weather_daily_cycle() -> None:
    by_hour: dict[int, list[dict[str, float]]] = defaultdict(list)
    for dev in range(3):
        for r in generate(f"weather-{dev}", "weather", ms(2025, 5, 1), None, 30 * 288, seed=2):
            by_hour[hour_of(r["ts"])].append(r["values"])

    def mean(hour: int, metric: str) -> float:
        return statistics.mean(v[metric] for v in by_hour[hour])

    assert mean(14, "air_temp_c") > mean(4, "air_temp_c") + 4
    assert mean(14, "humidity_pct") < mean(4, "humidity_pct") - 8  # humidity inversely related
    assert all(v["solar_wm2"] == 0 for h in (0, 1, 2, 22, 23) for v in by_hour[h])
    assert mean(12, "solar_wm2") > 300
    rainy = [v for vs in by_hour.values() for v in vs if v["rain_mm"] > 0]
    assert 0.01 < len(rainy) / sum(len(vs) for vs in by_hour.values()) < 0.3
    assert mean(15, "wind_ms") > mean(3, "wind_ms")


def test_collar_fever_episodes_are_rare_and_last_hours() -> None:
    fever_readings = total = 0
    runs: list[float] = []
    normal: list[float] = []
    for dev in range(40):
        run_len = 0
        for r in generate(f"collar-{dev}", "collar", ms(2025, 3, 1), None, 60 * 96, seed=9):
            t = r["values"]["body_temp_c"]
            total += 1
            if t > 39.5:
                fever_readings += 1
                run_len += 1
            else:
                normal.append(t)
                if run_len:
                    runs.append(run_len * 0.25)
                    run_len = 0
    share = fever_readings / total
    assert 0.002 < share < 0.08
    assert len(runs) >= 10
    assert statistics.median(runs) >= 3.0  # hours
    assert 38.3 < statistics.mean(normal) < 38.7


def test_barn_air_builds_up_when_closed_at_night() -> None:
    co2: dict[int, list[float]] = defaultdict(list)
    nh3: dict[int, list[float]] = defaultdict(list)
    for r in generate("barn-1", "barn", ms(2025, 6, 1), None, 20 * 288, seed=4):
        co2[hour_of(r["ts"])].append(r["values"]["co2_ppm"])
        nh3[hour_of(r["ts"])].append(r["values"]["nh3_ppm"])
    assert statistics.mean(co2[3]) > 2 * statistics.mean(co2[13])
    assert statistics.mean(nh3[3]) > 2 * statistics.mean(nh3[13])


def test_devices_in_one_village_share_the_rain() -> None:
    # Weather stations of the same seed see the same rain; soil probes react to that same rain.
    a = [r["values"]["rain_mm"] for r in generate("weather-a", "weather", ms(2025, 7, 1), None, 30 * 288, seed=3)]
    b = [r["values"]["rain_mm"] for r in generate("weather-b", "weather", ms(2025, 7, 1), None, 30 * 288, seed=3)]
    assert sum(a) > 10
    assert a == b


def test_generator_speed() -> None:
    n = 0
    t0 = time.perf_counter()
    for kind in kinds():
        for _ in generate(f"{kind}-1", kind, ms(2025, 6, 1), 60_000, 20_000, seed=1):
            n += 1
    rate = n / (time.perf_counter() - t0)
    print(f"generator: {rate:,.0f} readings/s")
    assert rate > 20_000  # loose: shared CI machines; typically 150k-300k/s


# -- faults --------------------------------------------------------------------------------------


def test_fault_injection_proportions_and_shapes() -> None:
    n = 20_000
    rates = FaultRates(
        duplicate=0.05, out_of_order=0.03, malformed=0.04, out_of_range=0.02, offline=0.002, offline_readings=(5, 30)
    )
    metrics = get_catalogue().kinds["soil"].metrics
    msgs = list(messages("soil-0001", "soil", ms(2025, 6, 1), None, n, seed=1, rates=rates))
    count: dict[str, int] = defaultdict(int)
    seen_seq: set[int] = set()
    malformed_seqs = 0
    prev_payload = b""
    prev_seq = -1
    oor_readings = 0
    arrays = 0
    for m in msgs:
        for f in m.faults:
            count[f] += 1
        if "malformed" in m.faults:
            malformed_seqs += 1
            with pytest.raises((ValueError, KeyError, TypeError, AssertionError)):
                body = strict_json(m.payload)
                assert isinstance(body, dict)
                for value in body["values"].values():
                    assert isinstance(value, int | float) and math.isfinite(value)
            prev_payload = m.payload
            continue
        body = strict_json(m.payload)
        readings = body if isinstance(body, list) else [body]
        if isinstance(body, list):
            arrays += 1
            assert "offline" in m.faults
            seqs = [r["seq"] for r in body]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            assert m.send_ms == body[-1]["ts"]  # sent when the device is back
        if "duplicate" in m.faults:
            assert m.payload == prev_payload
        if "out_of_order" in m.faults:
            assert readings[0]["seq"] < prev_seq
        for r in readings:
            bad = [k for k, v in r["values"].items() if metrics[k].check(v)]
            oor_readings += bool(bad)
            assert bool(bad) == ("out_of_range" in m.faults) or isinstance(body, list)
            seen_seq.add(r["seq"])
            prev_seq = r["seq"]
        prev_payload = m.payload
    # every reading arrives exactly once, unless replaced by a malformed payload
    assert len(seen_seq) + malformed_seqs == n
    assert seen_seq <= set(range(n))
    online = n - sum(m.readings for m in msgs if "offline" in m.faults)
    assert abs(count["duplicate"] / online - 0.05) < 0.01
    assert abs(count["out_of_order"] / online - 0.03) < 0.008
    assert abs(count["malformed"] / online - 0.04) < 0.008
    assert abs(oor_readings / n - 0.02) < 0.006
    assert arrays == count["offline"]
    assert 0.001 < arrays / online < 0.004


def test_no_faults_means_clean_payloads() -> None:
    readings = list(generate("weather-9", "weather", ms(2025, 6, 1), None, 200, seed=1))
    payloads = [strict_json(m.payload) for m in messages("weather-9", "weather", ms(2025, 6, 1), None, 200, seed=1)]
    assert payloads == readings


def test_fault_rates_are_checked() -> None:
    with pytest.raises(ValueError):
        FaultRates(duplicate=1.5)
    with pytest.raises(ValueError):
        FaultRates(duplicate=0.6, malformed=0.6)


# -- against a real broker -----------------------------------------------------------------------


def test_run_against_mosquitto(tmp_path: Path) -> None:
    devices = [
        DeviceCredential("soil-0001", "soil", "s3cret-soil"),
        DeviceCredential("weather-0001", "weather", "s3cret-weather"),
        DeviceCredential("collar-0001", "collar", "s3cret-collar"),
    ]
    wrong_secret = DeviceCredential("barn-0001", "barn", "not-the-secret")
    passwd = tmp_path / "passwd"
    passwd.write_text(
        "".join(f"{d.id}:{hash_secret(d.secret)}\n" for d in devices)
        + f"barn-0001:{hash_secret('the-real-secret')}\n"
        + f"ingest:{hash_secret('ingest-pw')}\n"
    )
    acl = tmp_path / "acl"
    acl.write_text("pattern write v1/devices/%u/telemetry\n\nuser ingest\ntopic read v1/devices/+/telemetry\n")
    broker = mosquitto(tmp_path / "mosquitto", passwd, acl).start()
    received: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ingest-test", protocol=mqtt.MQTTv5)
    sub.username_pw_set("ingest", "ingest-pw")
    sub.on_message = lambda c, u, m: received.append((m.topic, m.payload))
    sub.on_subscribe = lambda *a: subscribed.set()
    try:
        sub.connect(broker.host, broker.port)
        sub.subscribe("v1/devices/+/telemetry", qos=1)
        sub.loop_start()
        assert subscribed.wait(5)
        rates = FaultRates(malformed=0.3, duplicate=0.1)
        now = int(time.time() * 1000)
        report = run(
            [*devices, wrong_secret],
            broker.host,
            broker.port,
            duration=2.5,
            seed=42,
            interval_s=0.15,
            rates=rates,
            unknown_devices=2,
            now_ms=now,
        )
        deadline = time.monotonic() + 5
        while len(received) < report.published and time.monotonic() < deadline:
            time.sleep(0.05)
        first_run = list(received)
        # In the background with a stop event and no duration, as `village demo` runs it.
        thread, stop, result = run_in_background(
            credentials=devices, host=broker.host, port=broker.port, duration=None, seed=1, interval_s=0.1
        )
        time.sleep(1.0)
        stop.set()
        thread.join(10)
        assert not thread.is_alive()
        assert result and result[0].connected == 3 and result[0].published > 0
        assert result[0].acked == result[0].published
    finally:
        sub.loop_stop()
        sub.disconnect()
        broker.stop()

    assert report.connected == 3
    assert report.refused_connections == 1  # wrong secret
    assert report.unknown_refused == 2 and report.unknown_accepted == 0
    assert report.published >= 3 * 8
    assert report.acked == report.published and report.refused == report.failed == 0
    received = first_run
    assert len(received) == report.published

    by_topic: dict[str, list[bytes]] = defaultdict(list)
    for topic, payload in received:
        by_topic[topic].append(payload)
    assert set(by_topic) == {f"v1/devices/{d.id}/telemetry" for d in devices}
    malformed_seen = 0
    for d in devices:
        got = by_topic[f"v1/devices/{d.id}/telemetry"]
        _, start, _ = schedule(d.id, d.kind, 42, 60.0, 0.15, 2.5, now)
        expected = [
            m for m, _ in zip(messages(d.id, d.kind, start, seed=42, rates=rates), range(len(got)), strict=False)
        ]
        assert got == [m.payload for m in expected]  # same seed, same payloads, in order, as sent
        for m in expected:
            if "malformed" in m.faults:
                malformed_seen += 1
                continue
            body = strict_json(m.payload)
            assert isinstance(body, dict)
            assert body["ts"] <= now + 1000  # simulated time ends at the run's "now"
            metrics = get_catalogue().kinds[d.kind].metrics
            assert all(metrics[k].check(v) is None for k, v in body["values"].items())
    assert malformed_seen >= 1
    assert report.by_fault.get("malformed") == malformed_seen
