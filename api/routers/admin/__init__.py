"""Registry administration under `/api/v1/admin`, one router per resource: divisions, farms, plots,
herds, animals, devices, products, facilities, lots, events (and their corrections), inspections,
and file imports.

Reading needs the row in the caller's area; changing it a role that writes (not an analyst) and
every reference the write makes inside the caller's area, by the rules declared once in
core/scope.py and ledger/scope.py and applied by the importers (api/services/admin.py). Farm
contact fields are personal data: they are returned only to the county administrator and the
farm's own village operator. Trace data is a ledger: lots, events and inspections are only ever
added; a wrong event is declared in error by a correction. Lists are paginated (`limit`, `offset`,
with `total`) and filtered.
"""

from fastapi import APIRouter

from api.routers.admin import (
    animals,
    devices,
    divisions,
    events,
    facilities,
    farms,
    herds,
    imports,
    inspections,
    lots,
    plots,
    products,
)

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])
for module in (
    divisions,
    farms,
    plots,
    herds,
    animals,
    devices,
    products,
    facilities,
    lots,
    events,
    inspections,
    imports,
):
    router.include_router(module.router)
