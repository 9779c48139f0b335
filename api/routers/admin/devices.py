"""Devices: registered on a plot, herd or animal of your area, provisioned (the broker secret is
answered once, only its hash is kept), rotated and revoked."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import Session, col, select

from api.deps import Actor, ActorDep, SessionDep
from api.problems import Problem
from api.schemas import Page
from api.schemas.registry import DeviceCreate, DevicePublic, DeviceSecretPublic
from api.services.admin import (
    READ,
    WRITE,
    Limit,
    Offset,
    VillageQ,
    not_found,
    page,
    registry_write,
    require_owner,
    require_writer,
    village_filter,
)
from core import provisioning
from core.models import Animal, Device, DeviceStatus, Herd, Plot

log = logging.getLogger(__name__)
router = APIRouter()


def publics(session: Session, devices: Sequence[Device]) -> list[DevicePublic]:
    """Devices with their plot, herd or animal and village, in three queries for the whole page."""
    plots = {
        p.id: p for p in session.exec(select(Plot).where(col(Plot.id).in_({d.plot_id for d in devices if d.plot_id})))
    }
    animals = {
        a.id: a
        for a in session.exec(select(Animal).where(col(Animal.id).in_({d.animal_id for d in devices if d.animal_id})))
    }
    herd_ids = {d.herd_id for d in devices if d.herd_id} | {a.herd_id for a in animals.values()}
    herds = {h.id: h for h in session.exec(select(Herd).where(col(Herd.id).in_(herd_ids)))}
    out = []
    for d in devices:
        where: dict[str, Any] = {"plot_no": None, "herd_no": None, "ear_tag": None, "village_code": None}
        if d.plot_id is not None and (p := plots.get(d.plot_id)):
            where |= {"plot_no": p.plot_no, "village_code": p.village_code}
        elif d.herd_id is not None and (h := herds.get(d.herd_id)):
            where |= {"herd_no": h.herd_no, "village_code": h.village_code}
        elif d.animal_id is not None and (a := animals.get(d.animal_id)):
            h = herds.get(a.herd_id)
            where |= {"ear_tag": a.ear_tag, "village_code": h.village_code if h else None}
        out.append(
            DevicePublic(
                id=d.id,
                kind=d.kind,
                status=d.status,
                created_at=d.created_at,
                provisioned_at=d.provisioned_at,
                revoked_at=d.revoked_at,
                **where,
            )
        )
    return out


def _in(villages: set[str]) -> Any:
    plots = select(Plot.id).where(col(Plot.village_code).in_(villages))
    herds = select(Herd.id).where(col(Herd.village_code).in_(villages))
    animals = select(Animal.id).where(col(Animal.herd_id).in_(herds))
    return select(Device).where(
        col(Device.plot_id).in_(plots) | col(Device.herd_id).in_(herds) | col(Device.animal_id).in_(animals)
    )


def _device(session: Session, device_id: str) -> Device:
    d = session.get(Device, device_id)
    if d is None:
        raise not_found(f"device {device_id}")
    return d


@router.get("/devices", response_model=Page[DevicePublic], responses=READ)
def list_devices(
    actor: ActorDep,
    session: SessionDep,
    village: VillageQ = None,
    kind: Annotated[str | None, Query(max_length=40)] = None,
    status: DeviceStatus | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[DevicePublic]:
    stmt = _in(village_filter(actor, village)).order_by(Device.id)
    if kind:
        stmt = stmt.where(Device.kind == kind)
    if status:
        stmt = stmt.where(Device.status == status)
    return page(session, stmt, limit, offset, convert_all=lambda rows: publics(session, rows))


@router.get("/devices/{device_id}", response_model=DevicePublic, responses=READ)
def get_device(device_id: str, actor: ActorDep, session: SessionDep) -> DevicePublic:
    d = _device(session, device_id)
    actor.require_read_row(session, "device", d, f"device {device_id}")
    return publics(session, [d])[0]


def _provision(session: Session, actor: Actor, device_id: str) -> DeviceSecretPublic:
    secret = provisioning.provision(session, device_id)
    session.commit()
    log.info("device %s provisioned by %s", device_id, actor.principal.username)
    return DeviceSecretPublic(secret=secret, **publics(session, [_device(session, device_id)])[0].model_dump())


@router.post("/devices", response_model=DeviceSecretPublic, status_code=201, responses=WRITE)
def create_device(body: DeviceCreate, actor: ActorDep, session: SessionDep) -> DeviceSecretPublic:
    """Register a device and provision it: the answer carries its broker secret, the only time it is shown
    (only its hash is stored). The broker picks it up at the next `village broker sync`."""
    require_writer(actor, "device")
    if session.get(Device, body.id) is not None:
        raise Problem(409, "conflict", f"device {body.id} exists; provision it again to rotate its secret")
    registry_write(session, actor, "devices", [body])
    return _provision(session, actor, body.id)


@router.post("/devices/{device_id}/provision", response_model=DeviceSecretPublic, responses=WRITE)
def provision_device(device_id: str, actor: ActorDep, session: SessionDep) -> DeviceSecretPublic:
    """Issue a new secret (rotation; also reinstates a revoked device). Shown once."""
    require_owner(actor, session, "device", _device(session, device_id))
    return _provision(session, actor, device_id)


@router.post("/devices/{device_id}/revoke", response_model=DevicePublic, responses=WRITE)
def revoke_device(device_id: str, actor: ActorDep, session: SessionDep) -> DevicePublic:
    """Revoke: the secret hash is forgotten; the broker refuses the device after the next sync."""
    require_owner(actor, session, "device", _device(session, device_id))
    provisioning.revoke(session, device_id)
    session.commit()
    log.info("device %s revoked by %s", device_id, actor.principal.username)
    return publics(session, [_device(session, device_id)])[0]
