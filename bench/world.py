"""A county-sized trace world for `village bench api`, deterministic for a seed.

On top of the demo county and season (api/demo.py: registry, trace, 3 days of sensor readings
from 1 July 2026 on the demo paddy plots, and their hourly and daily rollups), `grow`
bulk-inserts `lots` retail lots (5 kg bags of the demo's rice product, each with its own code and
lot number) packed from paddy lots of their own: one paddy lot per `bags_per_paddy` bags, grown
on the demo's monitored plots in turn (so the farms and plots repeat), each with a sowing and a
harvesting event inside the days that have readings (a synthetic 3-day season: its growth summary
and daily digests come from real readings in InfluxDB). Then the anchoring worker, as in
production, derives the growth summaries, digests and manifests and anchors every record on the
configured chain, up to 100,000 records per window.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert
from sqlmodel import Session, col, select

from api.demo import seed
from core.influx import InfluxV1
from core.models import Device, Plot
from core.settings import Settings
from ledger import codes
from ledger.models import Facility, Lot, LotParent, LotSource, Product, TraceEvent
from ledger.vocab import normalize_disposition, normalize_step

BAG_PRODUCT = "rice-5kg"
PADDY_PRODUCT = "paddy-yf47"
MILL = "PS-MILL-01"
SOWN = datetime(2026, 7, 1, 0, 30, tzinfo=UTC)  # 08:30 local, the first day with readings
HARVESTED = datetime(2026, 7, 3, 8, 0, tzinfo=UTC)  # 16:00 local, the last


@dataclass
class World:
    codes: list[str]  # the retail lots' codes, in generation order
    digital_links: list[str]  # /01/{gtin}/10/{lot_no} of each
    seeded: dict[str, Any]
    setup_s: dict[str, float]  # seconds: demo, insert, anchor


def _code(rng: random.Random, taken: set[str]) -> str:
    while True:
        data = "".join(rng.choice(codes.ALPHABET) for _ in range(codes.DATA_LENGTH))
        code = data + codes.check_char(data)
        if code not in taken and code[-1] in codes.ALPHABET:  # (plain URLs: no check symbol such as '*')
            taken.add(code)
            return code


def grow(
    engine: Engine,
    influx: InfluxV1,
    settings: Settings,
    *,
    lots: int,
    bags_per_paddy: int = 10,
    seed_value: int = 12,
    anchor: bool = True,
) -> World:
    """The demo world plus `lots` retail lots (and their paddy lots), anchored when `anchor`."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    seeded = seed(engine, influx, settings, anchor=False)
    from analytics.rollups import from_settings

    from_settings(settings).backfill()  # the hourly and daily rollups the dashboard's time series read
    timings["demo_s"] = round(time.perf_counter() - t0, 2)
    rng = random.Random(seed_value)
    t0 = time.perf_counter()
    with Session(engine) as s:
        bag = s.exec(select(Product).where(Product.code == BAG_PRODUCT)).one()
        paddy = s.exec(select(Product).where(Product.code == PADDY_PRODUCT)).one()
        mill = s.exec(select(Facility).where(Facility.code == MILL)).one()
        monitored = select(Device.plot_id).where(col(Device.plot_id).is_not(None))
        plot_ids = select(LotSource.plot_id).where(col(LotSource.plot_id).in_(monitored))
        plots = list(s.exec(select(Plot).where(col(Plot.id).in_(plot_ids)).order_by(Plot.id)).all())
        taken = set(s.exec(select(Lot.code)).all())
        n_paddy = -(-lots // bags_per_paddy)
        paddy_rows = [
            {
                "code": _code(rng, taken),
                "product_id": paddy.id,
                "lot_no": f"G26-{p:06d}",
                "quantity": float(rng.randint(40_000, 140_000)),
                "unit": "kg",
                "farm_id": plots[p % len(plots)].farm_id,
                "harvest_year": 2026,
                "created_at": datetime.now(UTC),
                "salt": f"{rng.getrandbits(128):032x}",
            }
            for p in range(n_paddy)
        ]
        paddy_ids = list(s.execute(insert(Lot).returning(Lot.id, sort_by_parameter_order=True), paddy_rows).scalars())  # type: ignore[call-overload]
        bag_rows = [
            {
                "code": _code(rng, taken),
                "product_id": bag.id,
                "lot_no": f"G26-{i:06d}",
                "quantity": 200.0,
                "unit": "bag",
                "facility_id": mill.id,
                "harvest_year": 2026,
                "created_at": datetime.now(UTC),
                "salt": f"{rng.getrandbits(128):032x}",
            }
            for i in range(lots)
        ]
        bag_ids = list(s.execute(insert(Lot).returning(Lot.id, sort_by_parameter_order=True), bag_rows).scalars())  # type: ignore[call-overload]
        s.execute(
            insert(LotSource),
            [{"lot_id": pid, "plot_id": plots[p % len(plots)].id, "area_mu": 10.0} for p, pid in enumerate(paddy_ids)],
        )
        s.execute(
            insert(LotParent),
            [
                {"child_lot_id": bid, "parent_lot_id": paddy_ids[i // bags_per_paddy], "relation": "split"}
                for i, bid in enumerate(bag_ids)
            ],
        )
        events = []
        for p, pid in enumerate(paddy_ids):
            plot = plots[p % len(plots)]
            for step, action, disposition, at in (
                ("sowing", "ADD", "active", SOWN),
                ("harvesting", "OBSERVE", None, HARVESTED),
            ):
                events.append(
                    {
                        "event_type": "ObjectEvent",
                        "action": action,
                        "biz_step": normalize_step(step),
                        "disposition": normalize_disposition(disposition) if disposition else None,
                        "event_time": at,
                        "event_time_zone_offset": "+08:00",
                        "lot_id": pid,
                        "read_point_plot_id": plot.id,
                        "biz_location": plot.village_code,
                        "attributes": {},
                        "actor_farm_id": plot.farm_id,
                        "recorded_at": datetime.now(UTC),
                        "salt": f"{rng.getrandbits(128):032x}",
                    }
                )
        s.execute(insert(TraceEvent), events)
        s.commit()
        gtin = bag.gtin
    timings["insert_s"] = round(time.perf_counter() - t0, 2)
    out_codes = [r["code"] for r in bag_rows]
    links = [f"/01/{gtin}/10/{r['lot_no']}" for r in bag_rows]
    if anchor:
        from ledger.anchoring import Anchorer
        from ledger.connect import anchoring_chain

        t0 = time.perf_counter()
        big = settings.model_copy(update={"anchor_window_leaves": max(settings.anchor_window_leaves, 100_000)})
        worker = Anchorer(engine, big, chain=anchoring_chain(big), influx=influx, seal_wait_s=0)
        report = worker.run_once(force_window=True)
        worker.run_once()  # tracks the receipts
        seeded = {**seeded, "windows": report.windows, "leaves": report.leaves, "chain_error": report.chain_error}
        timings["anchor_s"] = round(time.perf_counter() - t0, 2)
    return World(out_codes, links, seeded, timings)
