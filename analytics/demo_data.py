"""The illustrative county-year panel of `data/demo_statistics.csv`, made reproducibly.

Fourteen Liaoning counties, 2015-2024. The values are SYNTHESISED (marked "illustrative" in the
file's source column): no county's real statistics were used. Where RESEARCH.md gives a Liaoning
figure, the county mean of that year is set to it: rural 5G coverage 79 % in 2022, agricultural
production digitalisation 28.3 % (2022), IoT installation under 10 % and e-commerce share under
15 % (2022), mechanisation 78 % (2022), rural population 65+ 21.1 % (2022), and the digital
inclusive finance index follows the Peking University index of Liaoning (2015-2020, extrapolated
afterwards) scaled down for counties. The province rows (code 210000) hold RESEARCH.md's own
figures only.

The data carry a structure the panel models can find: a latent digital level that rises with a
county-specific roll-out year drives the digital indicators; agricultural employment concentrates
(location quotient up) where it is higher; and the latent revitalisation level that drives the
rural revitalisation indicators responds to it, more strongly in counties whose location quotient
is above 1.0. Regenerate with `python -m analytics.demo_data`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analytics.statistics_io import DEMO_FILE

YEARS = list(range(2015, 2025))
SEED = 11
THRESHOLD_LQ = 1.0  # planted: the digital effect on revitalisation is stronger above this location quotient
SLOPES = (0.55, 0.8)  # below, above
LQ_RESPONSE = 0.15  # digital level -> primary-employment share (the mediation path a)
LQ_EFFECT = 0.15  # location quotient -> revitalisation (path b)
DIGITAL_SHOCK = 0.06  # yearly county-specific shocks to the digital level (a random walk)

# code, name, development level, primary-employment share 2015, rural population (10k), forest %, roll-out year
COUNTIES: list[tuple[str, str, float, float, float, float, float]] = [
    ("211104", "大洼区 Dawa District", 0.80, 0.30, 22, 8, 2018.5),
    ("211122", "盘山县 Panshan County", 0.62, 0.46, 20, 6, 2019.0),
    ("210726", "黑山县 Heishan County", 0.45, 0.58, 45, 20, 2019.5),
    ("210727", "义县 Yi County", 0.30, 0.55, 32, 35, 2021.0),
    ("210781", "凌海市 Linghai City", 0.55, 0.48, 38, 15, 2019.5),
    ("210782", "北镇市 Beizhen City", 0.50, 0.52, 36, 30, 2019.0),
    ("210881", "盖州市 Gaizhou City", 0.50, 0.40, 45, 45, 2020.0),
    ("210882", "大石桥市 Dashiqiao City", 0.75, 0.28, 35, 25, 2019.0),
    ("210123", "康平县 Kangping County", 0.30, 0.62, 28, 12, 2020.5),
    ("210124", "法库县 Faku County", 0.40, 0.56, 35, 25, 2020.0),
    ("210181", "新民市 Xinmin City", 0.55, 0.50, 50, 10, 2019.5),
    ("211224", "昌图县 Changtu County", 0.35, 0.65, 75, 12, 2020.5),
    ("210922", "彰武县 Zhangwu County", 0.25, 0.60, 30, 25, 2021.0),
    ("210283", "庄河市 Zhuanghe City", 0.70, 0.38, 60, 40, 2018.5),
]
PADDY = {"211104", "211122"}  # Panjin rice: more irrigated area

# Liaoning, Peking University Digital Financial Inclusion Index (RESEARCH.md section 3); 2021-2024 extrapolated
DIF_REAL = {
    "dif_index": [226.40, 231.41, 267.18, 290.95, 311.01, 326.29],
    "dif_coverage_breadth": [194.17, 207.74, 239.87, 271.81, 292.44, 307.11],
    "dif_usage_depth": [178.41, 220.06, 291.27, 279.48, 302.52, 328.12],
    "dif_digitization_level": [420.06, 330.21, 313.57, 375.01, 387.77, 386.33],
}
DIF_LATER = {
    "dif_index": [338.0, 342.0, 350.0, 358.0],
    "dif_coverage_breadth": [318.0, 323.0, 330.0, 337.0],
    "dif_usage_depth": [340.0, 344.0, 352.0, 361.0],
    "dif_digitization_level": [388.0, 389.0, 392.0, 395.0],
}
G5_MEAN = {2019: 3.0, 2020: 25.0, 2021: 55.0, 2022: 79.0, 2023: 89.0, 2024: 94.0}
ILLUSTRATIVE = "illustrative: synthesised by analytics/demo_data.py, county means anchored to RESEARCH.md figures"
PROVINCE_2022 = "RESEARCH.md section 1: Liaoning 2022 reference figures"
PROVINCE_DIF = "RESEARCH.md section 3: Peking University digital inclusive finance index, Liaoning"


def _logistic(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def generate(seed: int = SEED) -> pd.DataFrame:
    """The demo panel as a wide frame: county_code, year, source, county_name and one column per indicator."""
    columns, _ = simulate(seed)
    rows = []
    for i, (code, name, *_rest) in enumerate(COUNTIES):
        for j, year in enumerate(YEARS):
            row: dict[str, object] = {"county_code": code, "year": year, "source": ILLUSTRATIVE, "county_name": name}
            row.update({k: _round(k, float(v[i, j])) for k, v in columns.items()})
            rows.append(row)
    rows += _province_rows()
    return pd.DataFrame(rows)


def simulate(seed: int = SEED) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Indicator arrays (county x year) and the latent levels behind them (digital, lq, revitalisation)."""
    rng = np.random.default_rng(seed)
    n, years = len(COUNTIES), YEARS
    t = np.array([y - 2015 for y in years], dtype=float)
    dev = np.array([c[2] for c in COUNTIES])
    share0 = np.array([c[3] for c in COUNTIES])
    pop0 = np.array([c[4] for c in COUNTIES], dtype=float)
    forest0 = np.array([c[5] for c in COUNTIES])
    tau = np.array([c[6] for c in COUNTIES])
    yr = np.array(years, dtype=float)

    # latent digital level (n, T): county-specific roll-out timing plus persistent shocks
    shock = np.cumsum(rng.normal(0, DIGITAL_SHOCK, (n, len(years))), axis=1)
    digital = np.vectorize(_logistic)((yr[None, :] - tau[:, None]) / 1.6) * (0.55 + 0.45 * dev[:, None])
    digital = np.clip(digital + 0.08 + shock, 0.01, 1.0)
    dev_d = digital - digital.mean(axis=0, keepdims=True)

    # agricultural employment concentrates where digital agriculture is further along
    share = share0[:, None] - 0.010 * t[None, :] + LQ_RESPONSE * dev_d + rng.normal(0, 0.006, (n, len(years)))
    region_share = share.mean(axis=0, keepdims=True)
    lq = share / region_share

    # latent revitalisation: a stronger digital effect where agriculture is concentrated (lq above the threshold)
    slope = np.where(lq > THRESHOLD_LQ, SLOPES[1], SLOPES[0])
    revital = 0.3 * dev[:, None] + 0.045 * t[None, :] + slope * digital + LQ_EFFECT * (lq - 1.0)
    revital = revital + rng.normal(0, 0.015, (n, len(years)))

    def noise(scale: float) -> np.ndarray:
        return rng.normal(0, scale, (n, len(years)))

    def anchored(mean: np.ndarray, spread: float, sd: float, lo: float = 0.0, hi: float = 100.0) -> np.ndarray:
        """Year means `mean` (T,), county deviations following the digital level."""
        return np.clip(mean[None, :] + spread * dev_d / 0.15 + noise(sd), lo, hi)

    growth = np.exp(0.04 * t)[None, :]
    rural_pop = pop0[:, None] * 0.985 ** t[None, :] * (1 + noise(0.005))
    gross_output = pop0[:, None] * (0.9 + share0[:, None]) * 1.25 * growth * np.exp(0.35 * revital) * (1 + noise(0.02))
    primary_va = 0.55 * gross_output
    income = 11500 * np.exp(0.062 * t)[None, :] * (0.85 + 0.3 * dev[:, None]) * (1 + 0.1 * revital) * (1 + noise(0.01))
    employment_total = pop0[:, None] * 0.95 * 0.995 ** t[None, :] * (1 + noise(0.01))
    employment_primary = share * employment_total
    g5 = np.array([G5_MEAN.get(y, 0.0) for y in years])
    five_g = np.where(g5[None, :] > 0, anchored(g5, 8.0, 2.0), 0.0)
    prod_digital = anchored(12.2 + 2.3 * t, 4.0, 0.8)
    iot = anchored(1.0 + 1.0 * t, 1.5, 0.3, lo=0.1)
    ecommerce_share = anchored(3.0 + 1.5 * t, 2.5, 0.5, lo=0.2)
    ecommerce_farm = ecommerce_share / 100 * gross_output * 0.6 * 1e4
    county_factor = (0.78 + 0.2 * dev)[:, None]
    dif = {}
    for key in DIF_REAL:
        province = np.array(DIF_REAL[key] + DIF_LATER[key])
        dif[key] = province[None, :] * county_factor * (1 + 0.12 * dev_d) * (1 + noise(0.01))
    size = pop0[:, None] / 40.0

    columns: dict[str, np.ndarray] = {
        "rural_5g_coverage": five_g,
        "rural_broadband_coverage": np.clip(82 + 20 * digital + noise(1.0), 0, 100),
        "internet_penetration": np.clip(30 + 40 * digital + noise(1.5), 0, 100),
        "mobile_phone_penetration": 85 + 30 * digital + noise(2.0),
        "optical_cable_length": size * (2500 + 6000 * digital) * (1 + noise(0.02)),
        "agri_production_digitalization_rate": prod_digital,
        "agri_iot_installation_rate": iot,
        "agri_mechanization_rate": anchored(70.3 + 1.1 * t, 2.0, 0.8),
        "farm_ecommerce_share": ecommerce_share,
        "farm_ecommerce_sales": ecommerce_farm,
        "ecommerce_sales": ecommerce_farm * (3.0 + 2.0 * dev[:, None]) * (1 + noise(0.03)),
        **dif,
        "telecom_business_volume": size * 30000 * (1 + 2.5 * digital) * (1 + noise(0.03)),
        "it_employees": size * (400 + 1500 * digital * dev[:, None]) * (1 + noise(0.04)),
        "software_revenue": size * (2000 + 20000 * digital * dev[:, None]) * (1 + noise(0.05)),
        "it_service_revenue": size * (3000 + 25000 * digital * dev[:, None]) * (1 + noise(0.05)),
        "software_employee_share": 0.2 + 0.8 * digital * dev[:, None] + noise(0.02),
        "rural_electricity_consumption": size * 40000 * (1 + 0.8 * digital) * growth * (1 + noise(0.02)),
        "primary_output_per_capita": primary_va * 1e8 / (rural_pop * 1e4),
        "grain_output": pop0[:, None] * 2.0 * (1 + 0.25 * revital) * (1 + rng.normal(0, 0.04, len(years))[None, :]),
        "agri_machinery_power": pop0[:, None] * 1.5 * (1 + 0.4 * revital) * (1 + noise(0.02)),
        "effective_irrigated_area": pop0[:, None]
        * np.array([1.6 if c[0] in PADDY else 0.8 for c in COUNTIES])[:, None]
        * (1 + 0.15 * revital)
        * (1 + noise(0.01)),
        "forest_coverage": np.clip(forest0[:, None] + 0.3 * t + 2.0 * revital + noise(0.2), 0, 100),
        "garbage_harmless_rate": np.clip(72 + 22 * revital + 0.8 * t + noise(1.0), 0, 100),
        "public_toilets": pop0[:, None] * 6 * (1 + 0.8 * revital) * (1 + noise(0.03)),
        "rural_health_workers": pop0[:, None] * 25 * (1 + 0.1 * revital) * 0.99 ** t[None, :] * (1 + noise(0.02)),
        "water_supply_capacity": pop0[:, None] * 0.2 * (1 + 0.5 * revital) * (1 + noise(0.02)),
        "education_expenditure": pop0[:, None] * 1500 * (1 + 0.5 * revital) * 1.03 ** t[None, :] * (1 + noise(0.02)),
        "illiteracy_rate": np.clip(4.0 - 1.5 * revital - 0.1 * t + noise(0.1), 0.3, 100),
        "tv_coverage": np.clip(97.0 + 2.5 * revital + noise(0.2), 0, 99.9),
        "income_ratio_rural_urban": 0.42 + 0.12 * revital + noise(0.005),
        "consumption_ratio_rural_urban": 0.45 + 0.15 * revital + noise(0.008),
        "rural_population": rural_pop,
        "rural_disposable_income": income,
        "rural_food_spending": 0.75 * 0.3 * income * (1 + noise(0.02)),
        "rural_employment": rural_pop * 0.55 * (1 + 0.05 * revital) * (1 + noise(0.01)),
        "rural_ageing_rate": np.clip(14.1 + 1.0 * t[None, :] - 2.0 * (dev[:, None] - dev.mean()) + noise(0.3), 0, 100),
        "employment_total": employment_total,
        "employment_primary": employment_primary,
        "employment_secondary": (employment_total - employment_primary) * (0.40 + 0.1 * dev[:, None]),
        "employment_tertiary": (employment_total - employment_primary) * (0.60 - 0.1 * dev[:, None]),
        "gross_output_agri": gross_output,
        "primary_value_added": primary_va,
        "gdp_per_capita": 35000 * (0.7 + 0.6 * dev[:, None]) * 1.05 ** t[None, :] * (1 + noise(0.02)),
        "fiscal_agri_support": np.clip(10 + 15 * share + noise(0.8), 0, 100),
        "fixed_asset_investment": pop0[:, None] * (0.8 + dev[:, None]) * (1 + 0.03 * t[None, :]) * (1 + noise(0.08)),
    }
    return columns, {"digital": digital, "lq": lq, "revitalisation": revital}


def _round(indicator: str, value: float) -> float:
    if indicator.startswith("employment") or indicator in ("rural_population", "rural_employment"):
        return round(value, 3)
    if indicator in ("income_ratio_rural_urban", "consumption_ratio_rural_urban"):
        return round(value, 4)
    if abs(value) >= 1000:
        return round(value)
    return round(value, 2)


def _province_rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for j, year in enumerate(range(2015, 2021)):
        row: dict[str, object] = {
            "county_code": "210000",
            "year": year,
            "source": PROVINCE_DIF,
            "county_name": "辽宁省",
        }
        row.update({k: v[j] for k, v in DIF_REAL.items()})
        rows.append(row)
    rows.append(
        {
            "county_code": "210000",
            "year": 2022,
            "source": PROVINCE_2022,
            "county_name": "辽宁省",
            "rural_5g_coverage": 79.0,
            "agri_production_digitalization_rate": 28.3,
            "agri_mechanization_rate": 78.0,
            "pasture_ai_monitoring_rate": 25.0,
            "data_driven_grower_rate": 18.0,
            "rural_ageing_rate": 21.1,
            "gross_output_agri": 5400.0,
        }
    )
    return rows


def write(path: Path = DEMO_FILE, seed: int = SEED) -> Path:
    frame = generate(seed)
    lead = ["county_code", "year", "source", "county_name"]
    cols = lead + [c for c in frame.columns if c not in lead]
    frame[cols].to_csv(path, index=False, lineterminator="\n")
    return path


if __name__ == "__main__":
    print(write())
