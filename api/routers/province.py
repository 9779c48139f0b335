"""The county comparison a province or city bureau publishes: the page `/province` (signed in like the
dashboard, Chinese by default, English on request) and its data under `/api/v1/province/...`, with
CSV and Excel exports (formula-safe cells, as the dashboard's).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from analytics.province import table_rows, weight_rows
from api.deps import ActorDep, SessionDep, page_actor_from_cookie
from api.i18n import language, strings
from api.problems import problem_responses
from api.routers.dashboard import XLSX, PeriodQ
from api.services import province as svc
from api.services.dashboard import _cell, is_formula_like, to_csv

router = APIRouter(tags=["province"])
API = "/api/v1/province"
READ = problem_responses(401, 403, 422, 503)
WithinQ = Annotated[
    str | None,
    Query(
        pattern=r"^\d{6}$",
        description="Narrow to a city (211100) or county (211122) inside your area; default: your whole area",
    ),
]


@router.get(f"{API}/comparison", summary="Every county of your area side by side, ranked", responses=READ)
def comparison(
    request: Request, actor: ActorDep, session: SessionDep, period: PeriodQ = None, within: WithinQ = None
) -> dict[str, Any]:
    """The monitored indicators, the composite index's members, the composite index with its entropy
    weights, and each county's rank per indicator and overall (analytics.province)."""
    return svc.comparison(session, request.app.state.settings, actor, period, within)


@router.get(
    f"{API}/comparison.csv",
    summary="The comparison as CSV",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV (UTF-8 with BOM), one row per county"}, **READ},
)
def comparison_csv(
    request: Request, actor: ActorDep, session: SessionDep, period: PeriodQ = None, within: WithinQ = None
) -> Response:
    result = svc.comparison(session, request.app.state.settings, actor, period, within)
    return Response(
        to_csv(table_rows(result)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="county-comparison-{result["period"]["label"]}.csv"'},
    )


@router.get(
    f"{API}/comparison.xlsx",
    summary="The comparison as an Excel workbook",
    response_class=Response,
    responses={200: {"content": {XLSX: {}}, "description": "Sheets: counties, weights, indicators"}, **READ},
)
def comparison_xlsx(
    request: Request, actor: ActorDep, session: SessionDep, period: PeriodQ = None, within: WithinQ = None
) -> Response:
    result = svc.comparison(session, request.app.state.settings, actor, period, within)
    return Response(
        to_xlsx(result),
        media_type=XLSX,
        headers={"Content-Disposition": f'attachment; filename="county-comparison-{result["period"]["label"]}.xlsx"'},
    )


def to_xlsx(result: dict[str, Any]) -> bytes:
    """Sheets: counties (ranked), weights of the composite index, indicator definitions; no cell is a formula."""
    import io

    from openpyxl import Workbook

    wb = Workbook()
    wb.remove(wb.active)  # type: ignore[arg-type]
    for title, records in (
        ("counties", table_rows(result)),
        ("weights", weight_rows(result)),
        ("indicators", result["indicators"]),
    ):
        ws = wb.create_sheet(title)
        cols: list[str] = []
        for r in records:
            cols += [k for k in r if k not in cols]
        ws.append(cols)
        for r in records:
            ws.append([_cell(r.get(c)) for c in cols])
        for row in ws.iter_rows():
            for cell in row:
                if is_formula_like(cell.value):
                    cell.data_type = "s"
                    cell.quotePrefix = True
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


@router.get(
    "/province",
    response_class=HTMLResponse,
    summary="County comparison page",
    responses={303: {"description": "Sign in first"}, **READ},
)
def province_page(request: Request, session: SessionDep, period: PeriodQ = None, within: WithinQ = None) -> Response:
    actor = page_actor_from_cookie(request, session)
    if actor is None:
        return RedirectResponse("/dashboard/login", status_code=303)
    lang = language(request)
    result = svc.comparison(session, request.app.state.settings, actor, period, within)
    query = "&".join(f"{k}={v}" for k, v in (("period", period), ("within", within)) if v)
    return request.app.state.templates.TemplateResponse(
        request,
        "province.html",
        {
            "lang": lang,
            "t": strings(lang),
            "result": result,
            "actor": actor,
            "query": query,
            "scope_code": within or actor.principal.scope,
        },
        headers={"Cache-Control": "no-store", "Vary": "Accept-Language, Cookie"},
    )
