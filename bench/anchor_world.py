"""A county's trace records for `village bench anchor`: real rows of the trace database, made in bulk.

The demo county's rice chain (ledger/data/demo_trace.yaml) repeated over many villages, farms,
plots and seasons, deterministic for a seed: every plot-season a paddy lot with its 14 field
events (sowing to the hand-over to the dryer, attributes drawn within the vocabulary's ranges and
checked by it) and a residue test; every 8 paddy lots of a township and season are merged and
dried, milled, tested, packed into two bag lots, stored and shipped (lot lineage, transformation
events with inputs and outputs); one event in about 400 is declared in error and corrected.
Every record is distinct (its own salt, times, figures, report numbers).

`generate(url, records)` writes exactly enough rows that the anchoring worker makes `records`
leaves from them, counting the manifest it adds for each lot. Rows are inserted with Core
executemany, ids assigned here; nothing is hashed here (the worker does that, and is timed).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlmodel import Session, SQLModel

from core.models import Farm, Plot, Village
from ledger.codes import ALPHABET, DATA_LENGTH, check_char
from ledger.models import (
    EventCorrection,
    Facility,
    Inspection,
    InspectionItem,
    Lot,
    LotParent,
    LotSource,
    Product,
    TraceEvent,
    TraceEventLot,
    item_passes,
)
from ledger.vocab import get_vocab

GROUP = 8  # paddy lots merged into one dried lot
PADDY_RECORDS = 17  # lot, 14 events, 1 inspection, its manifest
DOWNSTREAM_RECORDS = 17  # 4 lots, 7 events, 2 inspections, 4 manifests
PLOTS_PER_VILLAGE = 40  # 8 farms of 5 plots: a multiple of GROUP, so groups never span villages or seasons
SEASONS = tuple(range(2019, 2027))
CORRECT_EVERY = 400  # paddy lots per corrected event (a correction and its corrective event: 2 records)
OFFSET = "+08:00"
LAB = "盘锦市农产品质量检测中心"
CHUNK = 20_000


@dataclass
class Plan:
    """How many of each thing make exactly `records` leaves."""

    records: int
    groups: int = 0
    extra_paddy: int = 0  # paddy lots without a group (fill-up)
    extra_events: int = 0  # events added to the last paddy lot (fill-up)

    @property
    def paddy(self) -> int:
        return self.groups * GROUP + self.extra_paddy

    @property
    def corrections(self) -> int:
        return self.paddy // CORRECT_EVERY

    @classmethod
    def of(cls, records: int) -> Plan:
        if records < PADDY_RECORDS:
            raise ValueError(f"at least {PADDY_RECORDS} records (one paddy lot and its manifest)")
        group = GROUP * PADDY_RECORDS + DOWNSTREAM_RECORDS
        plan = cls(records)
        plan.groups = records // group
        while plan.total() > records:  # corrections add records too
            plan.groups -= 1
        while plan.total() + PADDY_RECORDS <= records:
            plan.extra_paddy += 1
        plan.extra_events = records - plan.total()
        if plan.paddy == 0:
            raise ValueError("too few records")
        return plan

    def total(self) -> int:
        return (
            self.groups * (GROUP * PADDY_RECORDS + DOWNSTREAM_RECORDS)
            + self.extra_paddy * PADDY_RECORDS
            + 2 * self.corrections
            + self.extra_events
        )


@dataclass
class _Rows:
    villages: list[dict[str, Any]] = field(default_factory=list)
    farms: list[dict[str, Any]] = field(default_factory=list)
    plots: list[dict[str, Any]] = field(default_factory=list)
    facilities: list[dict[str, Any]] = field(default_factory=list)
    lots: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    parents: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    event_lots: list[dict[str, Any]] = field(default_factory=list)
    inspections: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    corrections: list[dict[str, Any]] = field(default_factory=list)


class _World:
    def __init__(self, session: Session, plan: Plan, seed: int) -> None:
        self.session = session
        self.plan = plan
        self.rng = random.Random(seed)
        self.vocab = get_vocab()
        self.rows = _Rows()
        self.next_id: dict[str, int] = {}
        for name, table in (
            ("farm", Farm),
            ("plot", Plot),
            ("facility", Facility),
            ("lot", Lot),
            ("lot_source", LotSource),
            ("lot_parent", LotParent),
            ("trace_event", TraceEvent),
            ("inspection", Inspection),
            ("inspection_item", InspectionItem),
            ("event_correction", EventCorrection),
        ):
            t = table.__table__  # type: ignore[attr-defined]
            self.next_id[name] = (session.execute(sa.select(sa.func.max(t.c.id))).scalar() or 0) + 1
        self.codes: set[str] = set(session.execute(sa.select(Lot.__table__.c.code)).scalars())  # type: ignore[attr-defined]
        products = session.execute(sa.select(Product.__table__.c.code, Product.__table__.c.id)).all()  # type: ignore[attr-defined]
        self.product = dict(products)  # type: ignore[arg-type]
        self.recorded = datetime(2026, 11, 30, tzinfo=UTC)

    def id(self, table: str) -> int:
        value = self.next_id[table]
        self.next_id[table] = value + 1
        return value

    def salt(self) -> str:
        return self.rng.getrandbits(128).to_bytes(16, "big").hex()

    def code(self) -> str:
        while True:
            data = "".join(self.rng.choice(ALPHABET) for _ in range(DATA_LENGTH))
            code = data + check_char(data)
            if code not in self.codes:
                self.codes.add(code)
                return code

    # ------------------------------------------------------------ registry
    def registry(self) -> list[dict[str, Any]]:
        """Villages (under the demo county's townships), farms, plots, a dryer and a mill per township;
        returns the plots, each with its farm and village."""
        plots_needed = math.ceil(self.plan.paddy / len(SEASONS))
        villages = math.ceil(plots_needed / PLOTS_PER_VILLAGE)
        townships = ["211122101", "211122104", "211122108"]
        plots: list[dict[str, Any]] = []
        v_t, f_t = Village.__table__.c, Facility.__table__.c  # type: ignore[attr-defined]
        made_before = self.session.execute(sa.select(sa.func.count()).where(v_t.code.like("211122___3%"))).scalar() or 0
        existing = self.session.execute(
            sa.select(f_t.id, f_t.code, f_t.name, f_t.village_code).where(f_t.code.like("BX-%"))
        )
        self.facilities = {r.code: dict(r._mapping) for r in existing}
        new_facilities = []
        for t in townships:
            for kind, prefix, name in (("dryer", "DRY", "粮食烘干中心"), ("mill", "MILL", "大米加工厂")):
                if f"BX-{prefix}-{t[-3:]}" in self.facilities:
                    continue
                row = {
                    "id": self.id("facility"),
                    "code": f"BX-{prefix}-{t[-3:]}",
                    "name": f"{t[-3:]}{name}",
                    "kind": kind,
                }
                self.facilities[row["code"]] = row
                new_facilities.append(row)
        for v in range(made_before, made_before + villages):
            township = townships[v % len(townships)]
            code = f"{township}{300 + v // len(townships):03d}"
            self.rows.villages.append(
                {
                    "code": code,
                    "township_code": township,
                    "name_zh": f"模拟{v + 1}村",
                    "name_en": f"Bench Village {v + 1}",
                }
            )
            for f in range(PLOTS_PER_VILLAGE // 5):
                farm_id = self.id("farm")
                self.rows.farms.append(
                    {
                        "id": farm_id,
                        "code": f"BX-{code[-6:]}-F{f + 1:02d}",
                        "name": f"模拟水稻种植合作社 {code[-6:]}-{f + 1:02d}",
                        "kind": self.rng.choice(["cooperative", "family_farm", "smallholder"]),
                        "village_code": code,
                        "contact_name": None,
                        "contact_phone": None,
                    }
                )
                for p in range(5):
                    plot = {
                        "id": self.id("plot"),
                        "plot_no": f"{code}-{f * 5 + p + 1:03d}",
                        "farm_id": farm_id,
                        "village_code": code,
                        "area_mu": float(self.rng.randint(20, 240)),
                        "crop": "rice",
                        "lat": None,
                        "lon": None,
                    }
                    self.rows.plots.append(plot)
                    plots.append({**plot, "township": township})
        for facility in new_facilities:  # each township's dryer and mill sit in the demo's first village
            facility["village_code"] = "211122101201"
        self.rows.facilities += new_facilities
        return plots

    def facility(self, township: str, kind: str) -> dict[str, Any]:
        return self.facilities[f"BX-{'DRY' if kind == 'dryer' else 'MILL'}-{township[-3:]}"]

    # ------------------------------------------------------------ records
    def lot(self, product: str, lot_no: str, quantity: float, unit: str, year: int, **owner: int | None) -> int:
        lot_id = self.id("lot")
        self.rows.lots.append(
            {
                "id": lot_id,
                "code": self.code(),
                "product_id": self.product[product],
                "lot_no": lot_no,
                "quantity": quantity,
                "unit": unit,
                "farm_id": owner.get("farm_id"),
                "facility_id": owner.get("facility_id"),
                "harvest_year": year,
                "created_at": self.recorded,
                "salt": self.salt(),
            }
        )
        return lot_id

    def event(
        self,
        step: str,
        when: datetime,
        attributes: dict[str, Any],
        *,
        lot_id: int | None = None,
        inputs: Iterable[int] = (),
        outputs: Iterable[int] = (),
        plot: dict[str, Any] | None = None,
        facility: dict[str, Any] | None = None,
        action: str | None = "OBSERVE",
        disposition: str | None = None,
    ) -> int:
        event_id = self.id("trace_event")
        transformation = bool(inputs or outputs)
        place = plot or facility
        assert place is not None
        self.rows.events.append(
            {
                "id": event_id,
                "event_id": None,
                "event_type": "TransformationEvent" if transformation else "ObjectEvent",
                "action": None if transformation else action,
                "biz_step": self.vocab.normalize_step(step),
                "disposition": self.vocab.normalize_disposition(disposition) if disposition else None,
                "event_time": when,
                "event_time_zone_offset": OFFSET,
                "lot_id": lot_id,
                "parent_uri": None,
                "read_point_plot_id": plot["id"] if plot else None,
                "read_point_facility_id": facility["id"] if facility and not plot else None,
                "biz_location": place["village_code"],
                "attributes": self.vocab.validate_attributes(step, attributes),
                "actor_farm_id": plot["farm_id"] if plot else None,
                "actor_facility_id": None if plot else facility["id"],  # type: ignore[index]
                "recorded_at": self.recorded,
                "salt": self.salt(),
            }
        )
        for role, ids in (("input", inputs), ("output", outputs)):
            self.rows.event_lots += [{"trace_event_id": event_id, "lot_id": i, "role": role} for i in ids]
        return event_id

    def inspection(
        self, lot_id: int, sampled: date, report_no: str, items: list[tuple[str, float, str, float, str]]
    ) -> None:
        inspection_id = self.id("inspection")
        passed = True
        for item, value, unit, limit, method in items:
            ok = item_passes(value, limit, "max")
            passed = passed and ok
            self.rows.items.append(
                {
                    "id": self.id("inspection_item"),
                    "inspection_id": inspection_id,
                    "item": item,
                    "value": value,
                    "unit": unit,
                    "limit_value": limit,
                    "limit_kind": "max",
                    "method": method,
                    "passed": ok,
                }
            )
        certificate = hashlib.sha256(f"{report_no} {items}".encode()).hexdigest()
        self.rows.inspections.append(
            {
                "id": inspection_id,
                "lot_id": lot_id,
                "lab": LAB,
                "report_no": report_no,
                "sampled_on": sampled,
                "reported_on": sampled + timedelta(days=2),
                "certificate_sha256": certificate,
                "passed": passed,
                "recorded_at": self.recorded,
                "salt": self.salt(),
            }
        )

    def at(self, year: int, month: int, day: int, hour: int) -> datetime:
        """A local (+08:00) time as UTC, with minutes drawn."""
        return datetime(year, month, day, hour, self.rng.randrange(0, 60, 5), tzinfo=UTC) - timedelta(hours=8)

    def paddy(self, plot: dict[str, Any], year: int, n: int, dryer: dict[str, Any]) -> tuple[int, float, list[int]]:
        """A plot's season: the lot, its 14 field events and its residue test. Returns (lot id, kg, event ids)."""
        r = self.rng
        kg = round(plot["area_mu"] * r.uniform(560, 700), 0)
        number = self.next_id["lot"]  # lot numbers and report numbers by lot id: unique across runs
        lot_id = self.lot("paddy-yf47", f"{year}-{number:07d}", kg, "kg", year, farm_id=plot["farm_id"])
        self.rows.sources.append(
            {
                "id": self.id("lot_source"),
                "lot_id": lot_id,
                "plot_id": plot["id"],
                "herd_id": None,
                "area_mu": plot["area_mu"],
            }
        )
        d = r.randint(0, 6)
        steps: list[tuple[str, datetime, dict[str, Any], dict[str, Any]]] = [
            (
                "sowing",
                self.at(year, 4, 10 + d, 7),
                {"variety": "盐丰47", "seed_kg_per_mu": round(r.uniform(3.5, 5.5), 2), "method": "nursery_tray"},
                {"action": "ADD", "disposition": "active"},
            ),
            (
                "fertilising",
                self.at(year, 5, 16 + d, 8),
                {
                    "product": "复合肥 15-15-15",
                    "method": "basal",
                    "rate_kg_per_mu": round(r.uniform(30, 45), 2),
                    "n_kg_per_mu": 6,
                    "p2o5_kg_per_mu": 6,
                    "k2o_kg_per_mu": 6,
                },
                {},
            ),
            (
                "irrigating",
                self.at(year, 5, 19 + d, 6),
                {"water_mm": round(r.uniform(60, 90), 1), "method": "flooding"},
                {},
            ),
            (
                "transplanting",
                self.at(year, 5, 22 + d, 8),
                {
                    "method": r.choice(["machine", "manual"]),
                    "hills_per_m2": round(r.uniform(18, 24), 1),
                    "seedling_age_days": 35 + d,
                },
                {},
            ),
            (
                "fertilising",
                self.at(year, 6, 8 + d, 8),
                {
                    "product": "尿素 urea",
                    "method": "topdressing",
                    "rate_kg_per_mu": round(r.uniform(8, 12), 2),
                    "n_kg_per_mu": round(r.uniform(3.5, 5.5), 2),
                },
                {},
            ),
            (
                "irrigating",
                self.at(year, 6, 20 + d, 6),
                {"water_mm": round(r.uniform(30, 60), 1), "method": "intermittent"},
                {},
            ),
            (
                "spraying",
                self.at(year, 6, 22 + d, 6),
                {
                    "product": "10%吡嘧磺隆可湿性粉剂",
                    "active_ingredient": "pyrazosulfuron-ethyl",
                    "dose": round(r.uniform(10, 20), 3),
                    "dose_unit": "g/mu",
                    "target": "稗草 barnyard grass",
                    "preharvest_interval_days": 60,
                },
                {},
            ),
            (
                "irrigating",
                self.at(year, 7, 12 + d, 6),
                {"water_mm": round(r.uniform(30, 60), 1), "method": "intermittent"},
                {},
            ),
            (
                "fertilising",
                self.at(year, 7, 18 + d, 8),
                {
                    "product": "硫酸钾 potassium sulphate",
                    "method": "topdressing",
                    "rate_kg_per_mu": round(r.uniform(4, 8), 2),
                    "k2o_kg_per_mu": round(r.uniform(2, 4), 2),
                },
                {},
            ),
            (
                "spraying",
                self.at(year, 7, 24 + d, 6),
                {
                    "product": "75%三环唑可湿性粉剂",
                    "active_ingredient": "tricyclazole",
                    "dose": round(r.uniform(15, 25), 3),
                    "dose_unit": "g/mu",
                    "target": "稻瘟病 rice blast",
                    "preharvest_interval_days": 21,
                },
                {},
            ),
            ("irrigating", self.at(year, 9, 5 + d, 6), {"water_mm": 0.0, "method": "drainage"}, {}),
            ("sampling", self.at(year, 9, 22 + d, 9), {"sample_kg": round(r.uniform(0.5, 2), 3)}, {}),
            (
                "harvesting",
                self.at(year, 10, 1 + d, 9),
                {"yield_kg": kg, "moisture_pct": round(r.uniform(19, 22), 1), "method": "combine"},
                {},
            ),
            (
                "shipping",
                self.at(year, 10, 2 + d, 7),
                {"destination": dryer["name"], "to_facility": dryer["code"]},
                {"disposition": "in_transit"},
            ),
        ]
        events = [
            self.event(step, when, attrs, lot_id=lot_id, plot=plot, **extra) for step, when, attrs, extra in steps
        ]
        cadmium = round(r.uniform(0.02, 0.12), 2)
        tricyclazole = round(r.uniform(0.05, 0.6) if r.random() > 0.02 else r.uniform(2.05, 3), 2)  # 2 % fail
        self.inspection(
            lot_id,
            date(year, 10, 3 + d),
            f"PJQ-{year}-{number:07d}",
            [
                ("cadmium", cadmium, "mg/kg", 0.2, "GB 2762-2022"),
                ("chlorpyrifos", round(r.uniform(0.01, 0.08), 2), "mg/kg", 0.5, "GB 2763-2021"),
                ("tricyclazole", tricyclazole, "mg/kg", 2.0, "GB 2763-2021"),
            ],
        )
        return lot_id, kg, events

    def downstream(self, township: str, year: int, paddy: list[tuple[int, float]]) -> None:
        """Merged and dried, milled, tested, packed into two bag lots, stored and shipped."""
        r = self.rng
        dryer, mill = self.facility(township, "dryer"), self.facility(township, "mill")
        total = sum(kg for _, kg in paddy)
        dried_kg = round(total * r.uniform(0.86, 0.9), 0)
        g = self.next_id["lot"]
        dried = self.lot("paddy-yf47", f"{year}-D{g:07d}", dried_kg, "kg", year, facility_id=dryer["id"])
        self.rows.parents += [
            {
                "id": self.id("lot_parent"),
                "child_lot_id": dried,
                "parent_lot_id": p,
                "relation": "merge",
                "quantity": kg,
            }
            for p, kg in paddy
        ]
        day = r.randint(6, 12)
        drying = {
            "final_moisture_pct": round(r.uniform(13.8, 14.5), 1),
            "max_temperature_c": round(r.uniform(45, 55), 1),
            "hours": round(r.uniform(10, 20), 1),
        }
        self.event(
            "drying", self.at(year, 10, day, 20), drying, inputs=[p for p, _ in paddy], outputs=[dried], facility=dryer
        )
        self.inspection(
            dried,
            date(year, 10, day + 1),
            f"PJQ-{year}-D{g:07d}",
            [
                ("moisture", drying["final_moisture_pct"], "%", 14.5, "GB 1350-2009"),
                ("cadmium", round(r.uniform(0.02, 0.1), 2), "mg/kg", 0.2, "GB 2762-2022"),
                ("chlorpyrifos", round(r.uniform(0.01, 0.05), 2), "mg/kg", 0.5, "GB 2763-2021"),
                ("tricyclazole", round(r.uniform(0.05, 0.4), 2), "mg/kg", 2.0, "GB 2763-2021"),
            ],
        )
        used = round(dried_kg * r.uniform(0.3, 0.6), 0)
        milled_kg = round(used * r.uniform(0.66, 0.7), 0)
        milled = self.lot("rice-bulk", f"{year}-M{g:07d}", milled_kg, "kg", year, facility_id=mill["id"])
        self.rows.parents.append(
            {
                "id": self.id("lot_parent"),
                "child_lot_id": milled,
                "parent_lot_id": dried,
                "relation": "transform",
                "quantity": used,
            }
        )
        day += 6
        self.event(
            "milling",
            self.at(year, 10, day, 10),
            {"milled_yield_pct": round(100 * milled_kg / used, 1), "head_rice_pct": round(r.uniform(58, 64), 1)},
            inputs=[dried],
            outputs=[milled],
            facility=mill,
        )
        report = f"PJQ-{year}-M{g:07d}"
        self.event(
            "inspecting",
            self.at(year, 10, day + 1, 10),
            {"sample_kg": 2.0, "report_no": report},
            lot_id=milled,
            facility=mill,
            disposition="conformant",
        )
        self.inspection(
            milled,
            date(year, 10, day + 1),
            report,
            [
                ("cadmium", round(r.uniform(0.02, 0.09), 2), "mg/kg", 0.2, "GB 2762-2022"),
                ("moisture", round(r.uniform(14.2, 15.2), 1), "%", 15.5, "GB/T 1354-2018"),
                ("grade", float(r.choice([1, 1, 1, 2])), "grade", 2.0, "GB/T 1354-2018"),
            ],
        )
        half = milled_kg // 10 * 5  # kg per bag lot, a whole number of 5 kg bags
        bags = [
            self.lot("rice-5kg", f"{year}-M{g:07d}-{s}", half / 5, "bag", year, facility_id=mill["id"]) for s in "AB"
        ]
        self.rows.parents += [
            {
                "id": self.id("lot_parent"),
                "child_lot_id": b,
                "parent_lot_id": milled,
                "relation": "split",
                "quantity": half,
            }
            for b in bags
        ]
        self.event(
            "packing",
            self.at(year, 10, day + 2, 14),
            {"package_kg": 5.0, "packages": int(2 * half / 5)},
            inputs=[milled],
            outputs=bags,
            facility=mill,
        )
        self.event(
            "storing",
            self.at(year, 10, day + 2, 16),
            {"temperature_c": round(r.uniform(8, 14), 1)},
            lot_id=bags[1],
            facility=mill,
            disposition="sellable_not_accessible",
        )
        for b, city in zip(
            bags, ("沈阳配送中心 Shenyang distribution centre", "大连配送中心 Dalian distribution centre"), strict=True
        ):
            self.event(
                "shipping",
                self.at(year, 10, day + 3, 7),
                {"destination": city},
                lot_id=b,
                facility=mill,
                disposition="in_transit",
            )

    def correction(self, wrong: int, plot: dict[str, Any], year: int) -> tuple[int, int]:
        """Declare a spraying event in error and record what was really sprayed."""
        event = next(e for e in self.rows.events if e["id"] == wrong)
        attrs = {**event["attributes"], "dose": round(event["attributes"]["dose"] * 1.5, 3)}
        corrective = self.event("spraying", event["event_time"], attrs, lot_id=event["lot_id"], plot=plot)
        self.rows.corrections.append(
            {
                "id": self.id("event_correction"),
                "event_id": wrong,
                "corrective_event_id": corrective,
                "reason": "incorrect_data",
                "declared_at": event["event_time"] + timedelta(days=3),
                "declared_at_offset": OFFSET,
                "recorded_at": self.recorded,
                "salt": self.salt(),
            }
        )
        return wrong, corrective

    def build(self) -> list[int]:
        """Every row; returns the events that need their EPCIS event ID (corrected and corrective)."""
        plots = self.registry()
        need_ids: list[int] = []
        group: list[tuple[int, float]] = []
        n = 0
        last: tuple[int, dict[str, Any], int] | None = None
        for year in SEASONS:
            for plot in plots:
                if n == self.plan.paddy:
                    break
                n += 1
                lot_id, kg, events = self.paddy(plot, year, n, self.facility(plot["township"], "dryer"))
                last = (lot_id, plot, year)
                if n % CORRECT_EVERY == 0:
                    need_ids += self.correction(events[9], plot, year)
                if n <= self.plan.groups * GROUP:  # consecutive plots of one village and season
                    group.append((lot_id, kg))
                    if len(group) == GROUP:
                        self.downstream(plot["township"], year, group)
                        group = []
        assert last is not None and not group
        lot_id, plot, year = last
        for k in range(self.plan.extra_events):
            attrs = {"water_mm": round(self.rng.uniform(20, 50), 1), "method": "intermittent"}
            self.event("irrigating", self.at(year, 8, 1 + k % 28, 6 + k // 28 % 12), attrs, lot_id=lot_id, plot=plot)
        return need_ids

    def insert(self) -> None:
        rows = self.rows
        for table, data in (
            (Village, rows.villages),
            (Farm, rows.farms),
            (Plot, rows.plots),
            (Facility, rows.facilities),
            (Lot, rows.lots),
            (LotSource, rows.sources),
            (LotParent, rows.parents),
            (TraceEvent, rows.events),
            (TraceEventLot, rows.event_lots),
            (Inspection, rows.inspections),
            (InspectionItem, rows.items),
            (EventCorrection, rows.corrections),
        ):
            _insert(self.session, table, data)


def _insert(session: Session, table: type[SQLModel], data: list[dict[str, Any]]) -> None:
    t = table.__table__  # type: ignore[attr-defined]
    for start in range(0, len(data), CHUNK):
        session.execute(sa.insert(t), data[start : start + CHUNK])
    if session.bind is not None and session.get_bind().dialect.name == "postgresql" and "id" in t.c:
        session.execute(
            sa.text(f"SELECT setval(pg_get_serial_sequence('{t.name}', 'id'), (SELECT max(id) FROM {t.name}))")
        )


def generate(engine: Engine, records: int, seed: int = 7) -> dict[str, int]:
    """Add the rows from which the worker makes exactly `records` leaves (the database must hold the
    demo county and its products, `load_demo_trace`, with every earlier record already anchored)."""
    from ledger.trace_io import fill_event_ids

    plan = Plan.of(records)
    with Session(engine) as session:
        world = _World(session, plan, seed)
        need_ids = world.build()
        world.insert()
        duplicates = fill_event_ids(session, need_ids)
        assert not duplicates
        session.commit()
        r = world.rows
    made = len(r.lots) * 2 + len(r.events) + len(r.inspections) + len(r.corrections)
    if made != records:
        raise AssertionError(f"planned {records} records, made {made}")
    return {
        "lots": len(r.lots),
        "events": len(r.events),
        "inspections": len(r.inspections),
        "corrections": len(r.corrections),
        "manifests": len(r.lots),
        "villages": len(r.villages),
        "farms": len(r.farms),
        "plots": len(r.plots),
    }
