"""The GS1 Digital Link resolver and the consumer trace page.

`/01/{gtin}/10/{lot}` behaves as a GS1-conformant resolver where that applies (DESIGN "Trace codes"):
- the default answer is the trace page (HTML, Chinese by default, English by Accept-Language or
  `?lang=en`), with a `Link: <...?linkType=linkset>; rel="linkset"` header;
- `?linkType=linkset` (or `all`), or an Accept header that prefers `application/linkset+json` or
  `application/json` to `text/html` (api/conneg.py), returns the RFC 9264 linkset naming the page, the
  JSON, the EPCIS document, the verification and the proof bundle, each link with a `title` (English) and
  `title*` in Chinese and English; every answer says `Vary: Accept` (and Accept-Language for the page);
- `?linkType=` one of those link types redirects (307) to that link; an unknown one gets the page;
- a GTIN with a wrong check digit, a path segment after the lot, or any other syntax error is a 400 with
  the reason (never a 200); an unknown lot is a 404 page (a problem JSON for a client that asks for JSON);
- a trailing slash or a GTIN-8/12/13 is redirected (301) to the canonical URI (api/canonical.py); HEAD
  answers as GET without the body, and other origins may read every answer (api/public_http.py).

`/t/{code}` serves the same page for lots named by their short code (lots without a GTIN).

`/.well-known/gs1resolver` is the resolver description file of the GS1-Conformant resolver standard
(1.1/1.2, its description-file schema): the resolver's name and root (TRACE_BASE_URL), the primary key it
resolves (01, GTIN, with the lot qualifier 10), the link type namespaces it uses (gs1: and the project's),
and that the page, not the linkset, is the default link (`linkTypeDefaultCanBeLinkset: false`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from api.canonical import REDIRECT
from api.i18n import LANGUAGES, language, strings
from api.microcache import page_variant
from api.problems import Problem, problem_responses
from api.routers.trace import known_code, normalized, service, verification_cache_control
from api.services.tracing import TraceService
from ledger import codes
from ledger.vocab import get_vocab

router = APIRouter(tags=["resolver"])
GS1 = "https://gs1.org/voc/"
LINKSET_JSON = "application/linkset+json"
# GS1-Conformant resolver standard: the JSON-LD context that turns a linkset into JSON-LD.
LINKSET_CONTEXT = "https://ref.gs1.org/standards/resolver/linkset-context"
HTML_HEADERS = {"Vary": "Accept-Language, Accept"}
# Errors of the Digital Link URI are a page or a problem JSON by Accept, in the language of Accept-Language.
PROBLEM_HEADERS = {"Vary": "Accept, Accept-Language"}


def link_types() -> dict[str, str]:
    """Link relation -> the API path suffix it points to ('' is the page)."""
    project = get_vocab().namespace
    return {
        f"{GS1}defaultLink": "",
        f"{GS1}pip": "",
        f"{GS1}traceability": "/api/v1/trace/{code}",
        f"{GS1}epcis": "/api/v1/trace/{code}/epcis",
        f"{GS1}verificationService": "/api/v1/trace/{code}/verify",
        f"{project}proofBundle": "/api/v1/trace/{code}/proof",
    }


LINK_MEDIA = {
    "": "text/html",
    "/api/v1/trace/{code}": "application/json",
    "/api/v1/trace/{code}/epcis": "application/ld+json",
    "/api/v1/trace/{code}/verify": "application/json",
    "/api/v1/trace/{code}/proof": "application/json",
}


def _expand(link_type: str) -> str:
    """`gs1:pip` -> the full GS1 URI; the project prefix likewise."""
    vocab = get_vocab()
    if link_type.startswith("gs1:"):
        return GS1 + link_type[4:]
    if link_type.startswith(f"{vocab.prefix}:"):
        return vocab.namespace + link_type[len(vocab.prefix) + 1 :]
    return link_type


def link_titles(rel: str) -> dict[str, str]:
    """Title of a link type in each page language (api/i18n `links`), by the local name of its URI."""
    name = rel.rsplit("/", 1)[-1]
    return {lang: strings(lang)["links"][name] for lang in LANGUAGES}


def linkset(base: str, anchor: str, page: str, code: str) -> dict[str, Any]:
    """RFC 9264 JSON linkset of a lot (its anchor is the lot's URI).

    Each link has `title` (English, plain ASCII as an RFC 8288 `title` should be) and `title*` in every page
    language, as GS1-conformant resolvers write them; the page, served in Chinese and English, says so in
    `hreflang`.
    """
    entry: dict[str, Any] = {"anchor": anchor}
    for rel, path in link_types().items():
        titles = link_titles(rel)
        target: dict[str, Any] = {"href": page if not path else base + path.format(code=code)}
        target["type"] = LINK_MEDIA[path]
        target["title"] = titles["en"]
        target["title*"] = [{"value": value, "language": lang} for lang, value in titles.items()]
        if not path:
            target["hreflang"] = list(LANGUAGES)
        entry[rel] = [target]
    return {"linkset": [entry]}


def render_page(request: Request, lang: str):  # type: ignore[no-untyped-def]
    templates = request.app.state.templates
    t = strings(lang)
    base = request.app.state.settings.trace_base_url.rstrip("/")
    vocab_short = {u.uri: n for n, u in get_vocab().steps.items()}

    def render(view: dict[str, Any], verification: dict[str, Any]) -> bytes:
        html = templates.get_template("trace.html").render(
            {
                "request": request,
                "lang": lang,
                "t": t,
                "lot": view,
                "v": verification,
                "base": base,
                "steps": vocab_short,
            }
        )
        return html.encode()

    return render


async def _page(request: Request, trace: TraceService, code: str, link_header: str) -> Response:
    lang = language(request)
    body, freshness = await run_in_threadpool(trace.page, code, lang, render_page(request, lang))
    # kept no longer than its badge is valid; "checking": the page reloads itself and nobody keeps it
    cache_control = verification_cache_control(freshness)
    return HTMLResponse(
        body, headers={**HTML_HEADERS, "Cache-Control": cache_control, "Content-Language": lang, "Link": link_header}
    )


def _linkset_media(request: Request, link_type: str | None) -> str | None:
    """The media type to answer the linkset in, or None for the page or the link `?linkType=` names.

    `?linkType=linkset` (or `all`) asks for it whatever Accept says; a known link type asks for that link
    (the page included) whatever Accept says; otherwise Accept decides, and a client that takes only
    `application/json` gets the linkset under that name."""
    variant = page_variant(request.headers.get("accept", ""))
    if link_type in ("linkset", "all"):
        return variant if variant != "text/html" else LINKSET_JSON
    if link_type and _expand(link_type) in link_types():
        return None
    return None if variant == "text/html" else variant


async def _resolve(request: Request, code: str, anchor: str, self_path: str, link_type: str | None) -> Response:
    trace = service(request)
    base = request.app.state.settings.trace_base_url.rstrip("/")
    page = base + self_path
    media = _linkset_media(request, link_type)
    if media is not None:
        return Response(
            orjson.dumps(linkset(base, anchor, page, code)),
            media_type=media,
            headers={
                "Cache-Control": "public, max-age=300",
                "Vary": "Accept",
                "Link": f'<{LINKSET_CONTEXT}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"',
            },
        )
    if link_type:
        path = link_types().get(_expand(link_type))
        if path:  # a link other than the page itself
            return RedirectResponse(base + path.format(code=code), status_code=307)
    link = f'<{page}?linkType=linkset>; rel="linkset"; type="{LINKSET_JSON}"'
    return await _page(request, trace, code, link)


LINK_TYPE = Query(
    None,
    alias="linkType",
    max_length=200,
    description="`linkset` (or `all`) for the RFC 9264 linkset; a GS1 link type (gs1:traceability, "
    "gs1:epcis, gs1:verificationService, vt:proofBundle) to be redirected to it; default: the trace page.",
)
LANG = Query(None, pattern="^(zh|en)$", description="Page language; default from Accept-Language, else zh.")
PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The trace page (HTML), or the linkset (by Accept, or `?linkType=linkset`)",
        "content": {"text/html": {}, LINKSET_JSON: {}, "application/json": {}},
    },
    307: {"description": "Redirect to the requested link type"},
    **REDIRECT,
    **problem_responses(400, 404, 429),
}
# HEAD is answered as GET without the body (api/public_http.py), outside the routes: said here for the docs.
HEAD_NOTE = " HEAD answers as GET without the body; other origins may read the answer (CORS)."


def _lot_segment(request: Request, lot: str) -> str:
    """The lot number: the one raw path segment after `/10/` (a '/' inside it is written %2F), decoded.

    More segments after it (`/01/{gtin}/10/{lot}/x`) are a 400: this resolver names lots, and a Digital Link
    with a further key qualifier (`/21/{serial}`) or a stray segment names nothing it serves. (A trailing slash
    never gets here: api/canonical.py redirects it.)"""
    raw = (request.scope.get("raw_path") or b"").decode("latin-1")
    parts = raw.split("/", 4)  # '', '01', gtin, '10', lot and whatever follows (still escaped)
    if len(parts) < 5 or "/" not in parts[4]:
        return lot
    head, _, extra = parts[4].partition("/")
    what = "a serial number (/21/)" if extra.startswith("21/") else f"the path segment(s) {unquote(extra)!r}"
    raise Problem(
        400,
        "digital-link-syntax",
        f"{what} after the lot number: this resolver serves /01/{{gtin}}/10/{{lot}} "
        "(a '/' inside a lot number is written %2F)",
        headers=PROBLEM_HEADERS,
        lot=unquote(head),
    )


@router.get(
    "/01/{gtin}/10/{lot:path}",
    summary="GS1 Digital Link: a lot of a product (trace page or linkset)",
    description="The trace page; the RFC 9264 linkset for `Accept: application/linkset+json` (or "
    "`application/json`) or `?linkType=linkset`; a redirect for another `linkType`. A segment after the lot is a "
    "400, a trailing slash a redirect to the canonical URI." + HEAD_NOTE,
    response_class=HTMLResponse,
    responses=PAGE_RESPONSES,
)
async def digital_link(
    gtin: str,
    lot: str,
    request: Request,
    link_type: str | None = LINK_TYPE,
    lang: str | None = LANG,
) -> Response:
    trace = service(request)
    try:
        gtin14 = codes.normalize_gtin(gtin)
    except codes.GtinCheckDigitError as e:
        raise Problem(400, "gtin-check-digit", str(e), headers=PROBLEM_HEADERS, gtin=gtin) from None
    except codes.DigitalLinkError as e:
        raise Problem(400, "digital-link-syntax", str(e), headers=PROBLEM_HEADERS) from None
    lot = _lot_segment(request, lot)
    try:
        codes.check_lot_no(lot)
    except ValueError as e:
        raise Problem(400, "digital-link-syntax", str(e), headers=PROBLEM_HEADERS) from None
    code = trace.known.get((gtin14, lot)) or await run_in_threadpool(trace.code_for_gtin_lot, gtin14, lot)
    if code is None:
        raise Problem(404, "unknown-lot", f"no lot {lot!r} of the product with GTIN {gtin14}", headers=PROBLEM_HEADERS)
    self_path = f"/01/{gtin14}/10/{quote(lot, safe='')}"
    return await _resolve(
        request, code, request.app.state.settings.trace_base_url.rstrip("/") + self_path, self_path, link_type
    )


@router.get(
    "/01/{gtin}",
    summary="GS1 Digital Link without a lot",
    responses=problem_responses(400, 404, 429),
)
async def digital_link_product(gtin: str) -> Response:
    """This resolver serves lots: a valid GTIN without `/10/{lot}` is a 404 saying so; a malformed one a 400."""
    try:
        gtin14 = codes.normalize_gtin(gtin)
    except codes.GtinCheckDigitError as e:
        raise Problem(400, "gtin-check-digit", str(e), gtin=gtin) from None
    except codes.DigitalLinkError as e:
        raise Problem(400, "digital-link-syntax", str(e)) from None
    raise Problem(404, "lot-required", f"GTIN {gtin14} names a product; add /10/{{lot}} to name one of its lots")


@router.get(
    "/t/{code}",
    summary="Trace page of a lot by its short code",
    description="The same answers as the Digital Link URI, for lots named by their short code." + HEAD_NOTE,
    response_class=HTMLResponse,
    responses=PAGE_RESPONSES,
)
async def short_code(
    code: str,
    request: Request,
    link_type: str | None = LINK_TYPE,
    lang: str | None = LANG,
) -> Response:
    trace = service(request)
    stored = await known_code(trace, code)
    base = request.app.state.settings.trace_base_url.rstrip("/")
    return await _resolve(request, stored, f"{base}/t/{stored}", f"/t/{stored}", link_type)


@router.get(
    "/t", summary="Trace code form target", responses={303: {"description": "To /t/{code}"}, **problem_responses(400)}
)
async def code_form(code: str = Query(..., max_length=40, description="A typed trace code")) -> Response:
    """Where the home page's form sends a typed code: redirects to its page (400 when malformed)."""
    return RedirectResponse(f"/t/{normalized(code)}", status_code=303)


@router.get("/", response_class=HTMLResponse, summary="Home: enter a trace code", include_in_schema=True)
async def home(request: Request, lang: str | None = LANG) -> Response:
    lang_ = language(request)
    return request.app.state.templates.TemplateResponse(
        request, "home.html", {"lang": lang_, "t": strings(lang_)}, headers={"Vary": "Accept-Language"}
    )


RESOLVER_NAME = "Digital village trace resolver"


def resolver_description(base: str) -> dict[str, Any]:
    """The GS1-Conformant resolver description file of this resolver, rooted at `base`."""
    vocab = get_vocab()
    return {
        "name": RESOLVER_NAME,
        "resolverRoot": base.rstrip("/"),
        "supportedPrimaryKeys": ["01"],
        "supportedLinkType": [
            {"namespace": GS1, "prefix": "gs1:"},
            {"namespace": vocab.namespace, "prefix": f"{vocab.prefix.rstrip(':')}:"},
        ],
        "linkTypeDefaultCanBeLinkset": False,
        "supportedContextValuesEnumerated": [],
    }


@router.get(
    "/.well-known/gs1resolver",
    summary="GS1 resolver description file",
    description="What this resolver resolves (GS1-Conformant resolver standard): name, root, primary keys, "
    "link type namespaces." + HEAD_NOTE,
)
async def gs1resolver(request: Request) -> Response:
    body = resolver_description(request.app.state.settings.trace_base_url)
    return Response(
        orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "public, max-age=3600"}
    )


@router.get("/healthz", summary="Liveness", tags=["resolver"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
