"""Products: a county's trade items (paddy, milled rice, 5 kg bags with a GTIN). A county
administrator adds them; everyone in the county reads them and names them in lots."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlmodel import col, select

from api.deps import ActorDep, SessionDep
from api.problems import Problem
from api.schemas import Page
from api.schemas.trace import ProductCreate, ProductPublic
from api.services.admin import READ, WRITE, Limit, Offset, not_found, page, require_writer, trace_write
from ledger.models import Product

router = APIRouter()


def _product(session: SessionDep, code: str) -> Product:
    product = session.exec(select(Product).where(Product.code == code)).first()
    if product is None:
        raise not_found(f"product {code}")
    return product


@router.get("/products", response_model=Page[ProductPublic], responses=READ)
def list_products(actor: ActorDep, session: SessionDep, limit: Limit = 50, offset: Offset = 0) -> Page[ProductPublic]:
    """The products of your county."""
    stmt = select(Product).where(col(Product.county_code).in_(actor.area.counties)).order_by(Product.code)
    return page(session, stmt, limit, offset, ProductPublic.model_validate)


@router.get("/products/{code}", response_model=ProductPublic, responses=READ)
def get_product(code: str, actor: ActorDep, session: SessionDep) -> ProductPublic:
    product = _product(session, code)
    actor.require_read_row(session, "product", product, f"product {code}")
    return ProductPublic.model_validate(product)


@router.post("/products", response_model=ProductPublic, status_code=201, responses=WRITE)
def create_product(body: ProductCreate, request: Request, actor: ActorDep, session: SessionDep) -> ProductPublic:
    """Add a trade item of your county (`county_code` defaults to it). Its names and GTIN go into every
    lot's hashed record, so a product is never changed afterwards."""
    require_writer(actor, "product")
    if session.exec(select(Product.id).where(Product.code == body.code)).first() is not None:
        raise Problem(409, "conflict", f"product {body.code} exists")
    trace_write(request, session, actor, {"products": [body.model_dump(mode="json", exclude_unset=True)]})
    return ProductPublic.model_validate(_product(session, body.code))
