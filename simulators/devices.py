"""Behaviour models of the simulated devices and the pure, deterministic reading generator.

Each model holds a little physical state (soil water, paddy water, a fever episode, barn air)
and advances it to the time of every reading, using the village `Climate` of its seed for
weather. A model's random draws come from `random.Random(f"{seed}:{device_id}")`, so the same
seed and device id always give the same readings, independent of other devices.

`generate()` is the public entry point: no MQTT, no I/O, a few microseconds per reading.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any, TypedDict

from core.catalogue import get_catalogue
from simulators.climate import (
    DAY_MS,
    HOUR_MS,
    TWO_PI,
    TZ_OFFSET_MS,
    Climate,
    Day,
    air_temp_at,
    climate_for,
    rain_in,
    sun_at,
)

DAY_H = 24.0


class Reading(TypedDict):
    """One reading as the MQTT contract defines it."""

    ts: int
    seq: int
    values: dict[str, Any]


def _clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


class Model:
    """Base class: a device's state, advanced by `values(ts_ms)` in increasing time."""

    kind = ""

    def __init__(self, device_id: str, seed: int | str, climate: Climate | None = None) -> None:
        self.device_id = device_id
        self.rng = random.Random(f"{seed}:{device_id}")
        self.climate = climate or climate_for(seed)
        self.last_ts: int | None = None
        self._day = -(10**9)
        self._d: Day | None = None
        self._next: Day | None = None
        self._rain_ev: tuple[tuple[int, int, float], ...] = ()

    def _at(self, ts_ms: int) -> tuple[Day, float]:
        """The climate's day at `ts_ms` and the local hour; per-day lookups are cached on the model."""
        day, rem = divmod(ts_ms + TZ_OFFSET_MS, DAY_MS)
        if day != self._day:
            c = self.climate
            self._day = day
            self._d = c.day(day)
            self._next = c.day(day + 1)
            self._rain_ev = c.rain_near(day)
        return self._d, rem / HOUR_MS  # type: ignore[return-value]

    def _rain(self, ts_ms: int, dt_h: float) -> float:
        """Rain (mm) in the `dt_h` hours up to `ts_ms`; call after `_at(ts_ms)`."""
        if not self._rain_ev and dt_h <= 4.0:
            return 0.0
        t0 = ts_ms - int(dt_h * HOUR_MS)
        if dt_h > 4.0:
            return self.climate.rain_between(t0, ts_ms)
        return rain_in(self._rain_ev, t0, ts_ms)

    def _air(self, d: Day, hour: float) -> float:
        return air_temp_at(d, self._next, hour)  # type: ignore[arg-type]

    def _dt_h(self, ts_ms: int, default_ms: int) -> float:
        last = self.last_ts
        self.last_ts = ts_ms
        return (ts_ms - last if last is not None else default_ms) / HOUR_MS

    def noise(self, sd: float) -> float:
        """Cheap sensor noise: uniform, zero mean, standard deviation `sd`."""
        return (self.rng.random() - 0.5) * 3.4641 * sd

    def values(self, ts_ms: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


class Soil(Model):
    """Soil probe at ~10 cm: water dries out between irrigations and jumps after rain."""

    kind = "soil"

    def __init__(self, device_id: str, seed: int | str, climate: Climate | None = None) -> None:
        super().__init__(device_id, seed, climate)
        r = self.rng
        self.wilting = 8.0 + 4.0 * r.random()
        self.field_capacity = 34.0 + 6.0 * r.random()
        self.saturation = self.field_capacity + 8.0
        self.irrigate_below = 17.0 + 5.0 * r.random()
        self.irrigate_add = 12.0 + 6.0 * r.random()
        self.dry_rate = (0.12 + 0.08 * r.random()) / DAY_H  # fraction of plant-available water per hour
        self.moisture = 22.0 + 10.0 * r.random()
        self.ec_base = 0.3 + 1.5 * r.random()  # saline-alkali coastal soils run high
        self.ph = 6.6 + 1.6 * r.random()
        self.temp_offset = self.noise(0.8)

    def values(self, ts_ms: int) -> dict[str, Any]:
        dt = self._dt_h(ts_ms, 600_000)
        d, hour = self._at(ts_ms)
        doy = d.doy
        sun = sun_at(d, hour)
        warm = _clamp((d.mean_temp + 5.0) / 30.0, 0.05, 1.3)
        et = self.dry_rate * warm * (0.35 + (2.2 * sun if sun > 0 else 0.0))
        m = self.moisture
        m -= (m - self.wilting) * et * dt
        if m > self.field_capacity:  # gravity drainage
            m -= (m - self.field_capacity) * min(1.0, 0.25 * dt)
        rain = self._rain(ts_ms, dt)
        if rain > 0.0:
            m += rain * 0.7
        if 105 <= doy <= 265 and m < self.irrigate_below and 6.0 <= hour < 10.0:
            m += self.irrigate_add
        m = _clamp(m, self.wilting * 0.8, self.saturation)
        self.moisture = m
        # Soil temperature: damped and lagged air cycle.
        ts_air = d.mean_temp + 1.0 + self.temp_offset
        soil_t = ts_air + 0.35 * d.amplitude * math.cos(TWO_PI * (hour - 17.0) / 24.0) + self.noise(0.1)
        ec = self.ec_base * (0.55 + 0.45 * m / 30.0) + self.noise(0.02)
        return {
            "soil_moisture": round(_clamp(m + self.noise(0.25), 0.0, 100.0) * 100) / 100,
            "soil_temp_c": round(_clamp(soil_t, -40.0, 80.0) * 100) / 100,
            "soil_ec": round(_clamp(ec, 0.0, 20.0) * 1000) / 1000,
            "soil_ph": round(_clamp(self.ph + self.noise(0.03), 0.0, 14.0) * 100) / 100,
        }


class Paddy(Model):
    """Paddy water level through the Panjin rice season.

    Puddling in early May, flooded after transplanting in late May, mid-season drainage in
    July, intermittent flooding in August, final drainage from early September for harvest,
    and a dry field (water table below the surface) from October to April.
    """

    kind = "paddy"

    def __init__(self, device_id: str, seed: int | str, climate: Climate | None = None) -> None:
        super().__init__(device_id, seed, climate)
        r = self.rng
        self.shift = int(r.random() * 9) - 4  # farms differ by a few days
        self.loss = (0.6 + 0.6 * r.random()) / DAY_H  # ET + seepage, cm per hour
        self.fill_rate = 1.2 + 1.0 * r.random()  # cm per hour while irrigating
        self.offset = self.noise(0.3)
        self.level: float | None = None
        self.irrigating = False

    def phase(self, doy: float) -> tuple[float, float, float]:
        """(irrigate below, irrigate up to, drain down to) in cm for the day of year."""
        x = doy - self.shift
        if x < 121:  # off-season, water table below the surface
            return (-99.0, -99.0, -12.0)
        if x < 140:  # soaking and puddling
            return (3.0, 6.0, 8.0)
        if x < 186:  # transplanted (around May 20): flooded
            return (4.0, 9.0, 11.0)
        if x < 201:  # mid-season drainage (烤田), early to mid July
            return (-99.0, -99.0, -8.0)
        if x < 244:  # intermittent flooding
            return (2.0, 6.0, 9.0)
        if x < 290:  # final drainage from early September, harvest late September
            return (-99.0, -99.0, -2.0)
        return (-99.0, -99.0, -12.0)

    def values(self, ts_ms: int) -> dict[str, Any]:
        dt = self._dt_h(ts_ms, 600_000)
        d, hour = self._at(ts_ms)
        low, high, drain_to = self.phase(d.doy)
        lv = self.level
        if lv is None:
            lv = (low + high) / 2 if high > -99 else drain_to
        warm = _clamp((d.mean_temp + 5.0) / 30.0, 0.0, 1.3)
        if lv > 0:
            lv -= self.loss * warm * dt
        rain = self._rain(ts_ms, dt)
        if rain > 0.0:
            lv += rain * 0.1
        if high > -99:
            if lv < low:
                self.irrigating = True
            if self.irrigating:
                lv += self.fill_rate * dt
                if lv >= high:
                    self.irrigating = False
        else:
            self.irrigating = False
        if lv > drain_to:  # outlet open above the target; surface water goes fast, soil water slowly
            rate = 0.35 if lv > 0 else 0.06
            lv -= min(lv - drain_to, rate * dt)
        lv = min(lv, 14.0)  # bund overflow
        self.level = lv
        water_t = d.mean_temp + 1.5 + 0.6 * d.amplitude * math.cos(TWO_PI * (hour - 15.5) / 24.0)
        return {
            "water_level_cm": round(_clamp(lv + self.offset + self.noise(0.15), -30.0, 50.0) * 100) / 100,
            "water_temp_c": round(_clamp(water_t + self.noise(0.1), -5.0, 45.0) * 100) / 100,
        }


class Weather(Model):
    """Weather station: the village climate plus a small micro-climate offset and sensor noise."""

    kind = "weather"

    def __init__(self, device_id: str, seed: int | str, climate: Climate | None = None) -> None:
        super().__init__(device_id, seed, climate)
        self.temp_offset = self.noise(0.4)
        self.wind_factor = 0.8 + 0.4 * self.rng.random()

    def values(self, ts_ms: int) -> dict[str, Any]:
        dt = self._dt_h(ts_ms, 300_000)
        d, hour = self._at(ts_ms)
        rain = self._rain(ts_ms, dt)
        raining = rain > 0.0
        t = self._air(d, hour) + self.temp_offset - (1.5 if raining else 0.0) + self.noise(0.1)
        rh = d.rh_base - 3.2 * (t - d.mean_temp) + (18.0 if raining else 0.0) + self.noise(1.0)
        afternoon = math.cos(TWO_PI * (hour - 15.0) / 24.0)
        wind = d.wind_mean * self.wind_factor * (1.0 + 0.35 * afternoon) + abs(self.noise(0.6))
        sun = sun_at(d, hour)
        solar = 0.0
        if sun > 0.0:
            solar = 1080.0 * sun**1.15 * (1.0 - 0.72 * d.cloud) * (0.35 if raining else 1.0)
            solar *= 1.0 + self.noise(0.04)
        return {
            "air_temp_c": round(_clamp(t, -50.0, 60.0) * 100) / 100,
            "humidity_pct": round(_clamp(rh, 8.0, 100.0) * 10) / 10,
            "rain_mm": round(_clamp(rain, 0.0, 500.0) * 100) / 100,
            "wind_ms": round(_clamp(wind, 0.0, 75.0) * 100) / 100,
            "solar_wm2": round(_clamp(solar, 0.0, 1500.0) * 10) / 10,
        }


class Collar(Model):
    """Cattle collar: body temperature ~38.5 °C with occasional fever episodes of hours,
    activity (steps) by day, rumination mostly at night; a sick animal moves and ruminates less."""

    kind = "collar"
    FEVER_PER_HOUR = 1.0 / (50 * 24)  # about one episode per animal per 50 days

    def __init__(self, device_id: str, seed: int | str, climate: Climate | None = None) -> None:
        super().__init__(device_id, seed, climate)
        r = self.rng
        self.base = 38.5 + self.noise(0.12)
        self.steps_per_h = 380.0 + 220.0 * r.random()
        self.fever_left_h = 0.0
        self.fever_len_h = 0.0
        self.fever_peak = 0.0

    def values(self, ts_ms: int) -> dict[str, Any]:
        dt = self._dt_h(ts_ms, 900_000)
        hour = ((ts_ms + TZ_OFFSET_MS) % DAY_MS) / HOUR_MS
        r = self.rng
        if self.fever_left_h <= 0.0 and r.random() < self.FEVER_PER_HOUR * dt:
            self.fever_len_h = self.fever_left_h = 6.0 + r.random() * 42.0
            self.fever_peak = 39.9 + 1.1 * r.random()
        temp = self.base + 0.25 * math.cos(TWO_PI * (hour - 17.0) / 24.0) + self.noise(0.06)
        sick = 1.0
        if self.fever_left_h > 0.0:
            progress = 1.0 - self.fever_left_h / self.fever_len_h
            shape = min(1.0, progress * 5.0, (1.0 - progress) * 5.0 + 0.2)
            temp += (self.fever_peak - temp) * shape
            sick = 1.0 - 0.6 * shape
            self.fever_left_h -= dt
        grazing = 6.0 <= hour < 19.0
        steps = self.steps_per_h * (1.0 if grazing else 0.15) * sick * dt * (1.0 + self.noise(0.25))
        rum_frac = (0.27 if grazing else 0.45) * (0.5 + 0.5 * sick) * (1.0 + self.noise(0.15))
        interval_min = dt * 60.0
        rumination = _clamp(rum_frac, 0.0, 1.0) * interval_min
        return {
            "body_temp_c": round(_clamp(temp, 30.0, 45.0) * 100) / 100,
            "activity": int(steps) if steps > 0 else 0,
            "rumination_min": round(_clamp(rumination, 0.0, min(60.0, interval_min)) * 10) / 10,
        }


class Barn(Model):
    """Barn air: ventilated by day; closed at night (and most of a cold day) so CO2 and NH3 rise."""

    kind = "barn"

    def __init__(self, device_id: str, seed: int | str, climate: Climate | None = None) -> None:
        super().__init__(device_id, seed, climate)
        r = self.rng
        self.open_h = 6.5 + r.random()
        self.close_h = 18.0 + 1.5 * r.random()
        self.co2_gen = 3600.0 + 1800.0 * r.random()  # ppm per hour with the stock inside
        self.nh3_gen = 22.0 + 14.0 * r.random()
        self.co2: float | None = None
        self.nh3: float | None = None

    def values(self, ts_ms: int) -> dict[str, Any]:
        dt = self._dt_h(ts_ms, 300_000)
        d, hour = self._at(ts_ms)
        t_out = self._air(d, hour)
        is_open = self.open_h <= hour < self.close_h and t_out > -8.0
        ach = (18.0 if t_out > 5.0 else 6.0) if is_open else 1.4  # air changes per hour
        k = math.exp(-ach * dt)
        co2_ss = 420.0 + self.co2_gen / ach
        nh3_ss = 1.0 + self.nh3_gen / ach
        co2 = self.co2 if self.co2 is not None else co2_ss
        nh3 = self.nh3 if self.nh3 is not None else nh3_ss
        self.co2 = co2 = co2_ss + (co2 - co2_ss) * k
        self.nh3 = nh3 = nh3_ss + (nh3 - nh3_ss) * k
        t_in = t_out + (2.0 if is_open else 7.0) + self.noise(0.2)
        rh = (62.0 if is_open else 82.0) + self.noise(2.0)
        return {
            "nh3_ppm": round(_clamp(nh3 * (1.0 + self.noise(0.04)), 0.0, 100.0) * 100) / 100,
            "co2_ppm": round(_clamp(co2 * (1.0 + self.noise(0.02)), 0.0, 10000.0) * 10) / 10,
            "air_temp_c": round(_clamp(t_in, -50.0, 60.0) * 100) / 100,
            "humidity_pct": round(_clamp(rh, 0.0, 100.0) * 10) / 10,
        }


MODELS: dict[str, type[Model]] = {m.kind: m for m in (Soil, Paddy, Weather, Collar, Barn)}


def kinds() -> list[str]:
    """Kinds that have a behaviour model and are in the catalogue."""
    return [k for k in get_catalogue().kinds if k in MODELS]


def default_interval_ms(kind: str) -> int:
    """The catalogue's reporting interval of a kind, in milliseconds."""
    return get_catalogue().kinds[kind].interval_s * 1000


def make_model(device_id: str, kind: str, seed: int | str, climate: Climate | None = None) -> Model:
    """A fresh behaviour model for a device; `KeyError` for a kind that has none."""
    try:
        cls = MODELS[kind]
    except KeyError:
        raise KeyError(f"no simulator for device kind {kind!r}; known: {', '.join(MODELS)}") from None
    return cls(device_id, seed, climate)


def generate(
    device_id: str,
    kind: str,
    start_ms: int,
    interval_ms: int | None = None,
    count: int | None = None,
    seed: int | str = 0,
    seq_start: int = 0,
) -> Iterator[Reading]:
    """Readings of one device every `interval_ms` from `start_ms` (endless when `count` is None).

    Deterministic: the same arguments give the same readings. `interval_ms` defaults to the
    catalogue's interval for the kind. Values are within the catalogue's ranges.
    """
    model = make_model(device_id, kind, seed)
    step = interval_ms or default_interval_ms(kind)
    values = model.values
    ts = start_ms
    seq = seq_start
    end = None if count is None else seq_start + count
    while end is None or seq < end:
        yield {"ts": ts, "seq": seq, "values": values(ts)}
        ts += step
        seq += 1
