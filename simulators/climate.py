"""Shared weather for one simulated village (Panjin, Liaoning: 41.1° N, 122.1° E, UTC+8).

Everything here is a pure function of the seed and the simulated time, so every device
simulated with the same seed sees the same rain at the same moment, whatever the order or
the process they are generated in. Day-level draws (temperature anomaly, cloud, wind,
rain events) come from a `random.Random` seeded with `"{seed}:day:{n}"` and are cached.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

LAT_RAD = math.radians(41.1)
LON_DEG = 122.07
TZ_OFFSET_MS = 8 * 3600 * 1000  # China Standard Time
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
TWO_PI = 2 * math.pi
# Day of year (1..366) of the epoch day 0 (1970-01-01) is 1; epoch days are counted in local time.


def local_day_and_hour(ts_ms: int) -> tuple[int, float]:
    """Epoch day number (local time) and the hour of that day as a float."""
    local = ts_ms + TZ_OFFSET_MS
    day, rem = divmod(local, DAY_MS)
    return day, rem / HOUR_MS


def day_of_year(day: int) -> float:
    """Approximate day of year (0..365.24) of an epoch day; good enough for seasons."""
    return (day + 0.5) % 365.2425


def seasonal_temp(doy: float) -> float:
    """Daily mean air temperature in Panjin by day of year: about -9 °C in January, 25 °C in late July."""
    return 8.5 + 17.0 * math.cos(TWO_PI * (doy - 200.0) / 365.2425)


def rain_probability(doy: float) -> float:
    """Chance that a day has rain: the summer monsoon brings most of Panjin's ~600 mm a year."""
    return 0.08 + 0.37 * math.exp(-(((doy - 205.0) / 38.0) ** 2))


@dataclass(frozen=True, slots=True)
class Day:
    """The weather drawn for one local day."""

    day: int
    doy: float
    mean_temp: float  # daily mean including the anomaly
    amplitude: float  # half the day's temperature range
    cloud: float  # 0 clear .. 1 overcast
    wind_mean: float  # m/s
    rh_base: float  # relative humidity at the daily mean temperature, %
    rain: tuple[tuple[int, int, float], ...]  # (start_ms, end_ms, mm per hour) in epoch ms
    sin_decl: float
    cos_decl: float


class Climate:
    """Village weather for one seed; day draws are cached (one small object per simulated day)."""

    def __init__(self, seed: int | str) -> None:
        self.seed = seed
        self._days: dict[int, Day] = {}
        self._anom: dict[int, float] = {}
        self._near: dict[int, tuple[tuple[int, int, float], ...]] = {}

    def _anomaly(self, day: int) -> float:
        """Day-to-day temperature anomaly, smoothed over three days so weather comes in spells."""
        a = self._anom.get(day)
        if a is None:
            a = 0.0
            for d, w in ((day - 1, 0.3), (day, 0.5), (day + 1, 0.3)):
                a += w * random.Random(f"{self.seed}:anom:{d}").gauss(0.0, 3.2)
            self._anom[day] = a
        return a

    def day(self, day: int) -> Day:
        d = self._days.get(day)
        if d is not None:
            return d
        rng = random.Random(f"{self.seed}:day:{day}")
        doy = day_of_year(day)
        p_rain = rain_probability(doy)
        rainy = rng.random() < p_rain
        cloud = min(1.0, max(0.0, (0.55 + 0.4 * rng.random()) if rainy else rng.betavariate(1.3, 2.6)))
        summer = math.exp(-(((doy - 205.0) / 45.0) ** 2))
        events: list[tuple[int, int, float]] = []
        if rainy:
            start_of_day = day * DAY_MS - TZ_OFFSET_MS
            for _ in range(1 + (rng.random() < 0.35)):
                start = start_of_day + int(rng.random() * 22 * HOUR_MS)
                hours = min(20.0, 0.5 + rng.expovariate(1 / 3.0))
                rate = rng.expovariate(1 / (1.0 + 3.0 * summer))
                events.append((start, start + int(hours * HOUR_MS), min(rate, 40.0)))
            events.sort()
        spring = math.exp(-(((doy - 100.0) / 40.0) ** 2))  # windy spring
        # Sun declination for the solar model.
        decl = math.radians(23.44) * math.sin(TWO_PI * (284 + doy) / 365.0)
        d = Day(
            day=day,
            doy=doy,
            mean_temp=seasonal_temp(doy) + self._anomaly(day),
            amplitude=(4.0 + 2.5 * spring) * (1.0 - 0.6 * cloud),
            cloud=cloud,
            wind_mean=max(0.5, rng.weibullvariate(2.6 + 2.0 * spring, 2.0)),
            rh_base=55.0 + 22.0 * summer + 15.0 * cloud,
            rain=tuple(events),
            sin_decl=math.sin(decl),
            cos_decl=math.cos(decl),
        )
        self._days[day] = d
        return d

    def rain_near(self, day: int) -> tuple[tuple[int, int, float], ...]:
        """Rain events that can touch a day: its own and the previous day's (which may run over midnight)."""
        ev = self._near.get(day)
        if ev is None:
            ev = self._near[day] = self.day(day - 1).rain + self.day(day).rain
        return ev

    def rain_rate(self, ts_ms: int) -> float:
        """Rain intensity (mm/h) at an instant."""
        day, _ = local_day_and_hour(ts_ms)
        total = 0.0
        for dd in (day - 1, day):  # an event may run over midnight
            for start, end, rate in self.day(dd).rain:
                if start <= ts_ms < end:
                    total += rate
        return total

    def rain_between(self, t0_ms: int, t1_ms: int) -> float:
        """Rain (mm) that fell in the interval (t0, t1]."""
        if t1_ms <= t0_ms:
            return 0.0
        d0, _ = local_day_and_hour(t0_ms)
        d1, _ = local_day_and_hour(t1_ms)
        total = 0.0
        for dd in range(d0 - 1, d1 + 1):
            for start, end, rate in self.day(dd).rain:
                lo = start if start > t0_ms else t0_ms
                hi = end if end < t1_ms else t1_ms
                if hi > lo:
                    total += rate * (hi - lo) / HOUR_MS
        return total

    def air_temp(self, ts_ms: int) -> float:
        """Air temperature (°C): season, spell anomaly and a daily cycle peaking at 14:00."""
        day, hour = local_day_and_hour(ts_ms)
        return air_temp_at(self.day(day), self.day(day + 1), hour)

    def solar_elevation_sin(self, ts_ms: int) -> float:
        """Sine of the sun's elevation (negative at night)."""
        day, hour = local_day_and_hour(ts_ms)
        return sun_at(self.day(day), hour)


SIN_LAT = math.sin(LAT_RAD)
COS_LAT = math.cos(LAT_RAD)
SOLAR_NOON = 12.0 - (LON_DEG - 120.0) / 15.0


def air_temp_at(d: Day, next_day: Day, hour: float) -> float:
    """Air temperature at `hour` of day `d`; the daily mean blends into the next day's."""
    frac = hour / 24.0
    mean = d.mean_temp + (next_day.mean_temp - d.mean_temp) * frac
    return mean + d.amplitude * math.cos(TWO_PI * (hour - 14.0) / 24.0)


def sun_at(d: Day, hour: float) -> float:
    """Sine of the sun's elevation at `hour` (local clock) of day `d`."""
    return SIN_LAT * d.sin_decl + COS_LAT * d.cos_decl * math.cos(TWO_PI * (hour - SOLAR_NOON) / 24.0)


def rain_in(events: tuple[tuple[int, int, float], ...], t0_ms: int, t1_ms: int) -> float:
    """Rain (mm) from `events` in the interval (t0, t1]."""
    total = 0.0
    for start, end, rate in events:
        if start < t1_ms and end > t0_ms:
            lo = start if start > t0_ms else t0_ms
            hi = end if end < t1_ms else t1_ms
            total += rate * (hi - lo) / HOUR_MS
    return total


@lru_cache(maxsize=64)
def climate_for(seed: int | str) -> Climate:
    """The shared `Climate` of a seed within this process."""
    return Climate(seed)
