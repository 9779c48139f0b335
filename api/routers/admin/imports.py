"""File imports through the API: a registry YAML or CSV file, or a trace YAML file, imported by the
same importers as `village registry import` / `village lots import`, as the caller: every reference
in the file is checked against the caller's area, and the whole file is kept or nothing is."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from pydantic import BaseModel

from api.deps import ActorDep, SessionDep
from api.problems import Problem
from api.services.admin import WRITE, import_problem
from core import registry_io
from core.importing import ImportErrors
from ledger import trace_io

router = APIRouter()
MAX_UPLOAD_BYTES = 4 * 1024 * 1024


class ImportSummary(BaseModel):
    source: str
    created: dict[str, int]
    updated: dict[str, int]
    unchanged: dict[str, int]


async def _saved(upload: UploadFile, suffix: str) -> Path:
    data = await upload.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise Problem(413, "upload-too-large", f"an import file is at most {MAX_UPLOAD_BYTES // 1024 // 1024} MiB")
    if not data.strip():
        raise Problem(422, "validation", "file: the uploaded file is empty")
    with tempfile.NamedTemporaryFile(prefix="village-import-", suffix=suffix, delete=False) as f:
        f.write(data)
    return Path(f.name)


@router.post("/imports/{kind}", response_model=ImportSummary, responses=WRITE | {413: WRITE[422]})
async def import_file(
    kind: Literal["registry", "trace"],
    request: Request,
    actor: ActorDep,
    session: SessionDep,
    file: Annotated[UploadFile, File(description="A YAML file (registry or trace), or a registry CSV file")],
    entity: Annotated[
        str | None, Query(description="For a registry CSV file: the entity its rows are (plots, farms...)")
    ] = None,
) -> ImportSummary:
    """Import a file as you: lines and fields of every problem are answered (422, 403 for a reference
    outside your area, 409 for a recorded fact it would rewrite), and nothing is kept unless all is right."""
    csv = entity is not None
    if csv and kind != "registry":
        raise Problem(422, "validation", "entity: only registry files may be CSV")
    path = await _saved(file, ".csv" if csv else ".yaml")
    name = file.filename or path.name
    try:
        result: Any
        if kind == "trace":
            result = trace_io.import_trace(session, path, scope=actor.scope)
        elif csv:
            try:
                section = registry_io.entity_name(entity or "")
            except ValueError as e:
                raise Problem(422, "validation", f"entity: {e}") from None
            result = registry_io.import_csv(session, section, path, scope=actor.scope)
        else:
            result = registry_io.import_yaml(session, path, scope=actor.scope)
    except ImportErrors as e:
        for x in e.errors:  # name the uploaded file, not the temporary one
            object.__setattr__(x, "source", name)
        raise import_problem(e) from None
    finally:
        path.unlink(missing_ok=True)
    session.commit()
    if kind == "trace":
        request.app.state.trace.forget()
    return ImportSummary(
        source=name,
        created=dict(result.created),
        updated=dict(getattr(result, "updated", {})),
        unchanged=dict(result.unchanged),
    )
