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

from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request

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


def _dashboard_after_writes(request: Request) -> Iterator[None]:
    """After a change through the registry API, this worker's dashboard sections are recomputed on the
    next view (the other workers' within API_DASHBOARD_CACHE_S)."""
    yield
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        request.app.state.dashboard.clear()


router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[Depends(_dashboard_after_writes)])
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
