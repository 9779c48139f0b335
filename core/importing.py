"""The importer core shared by the registry, trace and statistics imports: one row type, one error
type, one YAML reader and one CSV reader.

Every import is all or nothing: the readers turn a file (or the rows of an API request) into `Row`s
that remember where each value came from, the importers validate and stage them, and any problem
becomes a `RowError` (file, line, section, row index, field, message). When there is at least one,
`ImportErrors` carries them all and nothing is kept. A `RowError` has a kind: `invalid` (the data is
wrong), `forbidden` (a reference outside the actor's area, core.scope) or `conflict` (a recorded
fact would be rewritten); the API answers 422, 403 and 409 for them.

Personal values (farm contact fields) are never echoed in a message.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "ErrorKind",
    "ImportErrors",
    "ImportResult",
    "Report",
    "Row",
    "RowError",
    "RowModel",
    "csv_lines",
    "field_name",
    "loc_parts",
    "read_csv",
    "read_yaml",
    "reporter",
    "rows_from_data",
    "strip_lines",
    "validate_row",
]

M = TypeVar("M", bound=BaseModel)
ErrorKind = Literal["invalid", "forbidden", "conflict"]
Report = Callable[..., None]
"""err(field, message, kind="invalid"): report a problem of the row being imported."""


class RowModel(BaseModel):
    """The schema of one row of an import file. Numbers become strings where a string is expected,
    because YAML writes `code: 211122` as a number; the API's request models are stricter."""

    model_config = ConfigDict(
        extra="forbid", coerce_numbers_to_str=True, str_strip_whitespace=True, allow_inf_nan=False
    )


@dataclass(frozen=True)
class RowError:
    """One problem: where (file, line, section, row index, field), what, and of which kind."""

    source: str
    line: int | None
    entity: str
    index: int | None
    field: str | None
    message: str
    kind: ErrorKind = "invalid"

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        row = f"{self.entity}[{self.index}]" if self.index is not None else self.entity
        fld = f" field '{self.field}'" if self.field else ""
        return f"{where}: {row}{fld}: {self.message}"


class ImportErrors(ValueError):
    """The data was rejected; nothing was imported. `errors` lists every problem found."""

    def __init__(self, errors: list[RowError]) -> None:
        self.errors = errors
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0]}{more}" if errors else "invalid data")

    @property
    def kind(self) -> ErrorKind:
        """The gravest kind among the errors: forbidden, then conflict, then invalid."""
        kinds = {e.kind for e in self.errors}
        return "forbidden" if "forbidden" in kinds else "conflict" if "conflict" in kinds else "invalid"


@dataclass
class ImportResult:
    """What an import did, per section."""

    created: Counter[str] = field(default_factory=Counter)
    updated: Counter[str] = field(default_factory=Counter)
    unchanged: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)  # imported all the same (a name the national list differs on)

    @property
    def changed(self) -> bool:
        return bool(sum(self.created.values()) + sum(self.updated.values()))

    def summary(self, order: Sequence[str] = ()) -> str:
        sections = list(order) + sorted((set(self.created) | set(self.updated) | set(self.unchanged)) - set(order))
        parts = []
        for s in sections:
            c, u, n = self.created[s], self.updated[s], self.unchanged[s]
            if c or u or n:
                parts.append(f"{s}: {c} new, " + (f"{u} updated, " if u else "") + f"{n} unchanged")
        return "; ".join(parts) or "nothing to import"


# ---------------------------------------------------------------- rows


@dataclass
class Row:
    """One row as read: its values, the line it starts on, and the line markers of every nested
    mapping (YAML), so an error in `sources[1].plot_no` points at that line."""

    values: dict[str, Any]
    line: int | None = None
    marked: Mapping[str, Any] = field(default_factory=dict)

    def line_of(self, fld: str | None) -> int | None:
        node: Any = self.marked
        line = self.line
        for part in loc_parts(fld) if fld else ():
            if isinstance(node, Mapping):
                line = node.get("__lines__", {}).get(str(part), line)
                node = node.get(part)
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
                if isinstance(node, Mapping):
                    line = node.get("__line__", line)
            else:
                break
        return line


def field_name(loc: Sequence[Any]) -> str | None:
    """("sources", 0, "plot_no") -> "sources[0].plot_no"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def loc_parts(fld: str) -> list[Any]:
    """ "sources[0].plot_no" -> ["sources", 0, "plot_no"]."""
    parts: list[Any] = []
    for piece in fld.split("."):
        name, _, rest = piece.partition("[")
        if name:
            parts.append(name)
        while rest:
            index, _, rest = rest.partition("]")
            parts.append(int(index) if index.isdigit() else index)
            rest = rest.removeprefix("[")
    return parts


def validate_row(model: type[M], row: Row, err: Report, personal: frozenset[str] = frozenset()) -> M | None:
    """`row` as `model`, or None after reporting every validation problem (values of `personal`
    fields are not echoed)."""
    try:
        return model.model_validate(row.values)
    except ValidationError as e:
        for problem in e.errors():
            fld = field_name(problem["loc"])
            msg = problem["msg"]
            if fld not in personal and problem["type"] != "extra_forbidden" and "input" in problem and problem["loc"]:
                msg += f" (got {problem['input']!r})"
            err(fld, msg)
        return None


# ---------------------------------------------------------------- readers


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of every mapping and of each of its keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping = super().construct_mapping(node, deep=deep)
        mapping["__line__"] = node.start_mark.line + 1
        mapping["__lines__"] = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
        return mapping


def strip_lines(value: Any) -> Any:
    """A parsed YAML value without the line bookkeeping of the line-keeping loader."""
    if isinstance(value, dict):
        return {k: strip_lines(v) for k, v in value.items() if k not in ("__line__", "__lines__")}
    if isinstance(value, list):
        return [strip_lines(v) for v in value]
    return value


def _file_error(src: str, line: int | None, message: str) -> ImportErrors:
    return ImportErrors([RowError(src, line, "file", None, None, message)])


def read_yaml(path: Path, allowed: Sequence[str]) -> tuple[dict[str, list[Row]], list[RowError]]:
    """The sections of a YAML import file (one document, a mapping of section name to a list of
    rows) as rows with their lines. Unknown or malformed sections and rows are errors; an
    unreadable file or bad YAML raises ImportErrors."""
    src = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.load(f, Loader=_LineLoader)  # a SafeLoader subclass
    except OSError as e:
        raise _file_error(src, None, f"cannot read: {e.strerror}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise _file_error(src, mark.line + 1 if mark is not None else None, f"not valid YAML: {problem}") from e
    if doc is None:
        return {}, []
    if not isinstance(doc, dict):
        raise _file_error(src, 1, "expected a mapping of sections at the top")
    errors: list[RowError] = []
    sections: dict[str, list[Row]] = {}
    lines = doc.get("__lines__", {})
    for name, rows in doc.items():
        if name in ("__line__", "__lines__"):
            continue
        line = lines.get(str(name))
        if name not in allowed:
            errors.append(RowError(src, line, str(name), None, None, f"unknown section; expected one of {allowed}"))
        elif rows is not None and not isinstance(rows, list):
            errors.append(RowError(src, line, name, None, None, "expected a list of rows"))
        elif rows is not None:
            out = []
            for i, row in enumerate(rows):
                if isinstance(row, dict):
                    out.append(Row(strip_lines(row), row.get("__line__"), row))
                else:
                    errors.append(RowError(src, line, name, i, None, "expected a mapping (one row)"))
                    out.append(Row({}, line, {"__invalid__": True}))  # keeps row indexes aligned
            sections[name] = out
    return sections, errors


def csv_lines(path: Path) -> list[tuple[int, list[str]]]:
    """The cells of a CSV file (UTF-8, with or without BOM) with the line each record starts on."""
    src = str(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            out, line = [], 1
            for cells in reader:
                out.append((line, cells))
                line = reader.line_num + 1
            return out
    except OSError as e:
        raise _file_error(src, None, f"cannot read: {e.strerror}") from e
    except (csv.Error, UnicodeDecodeError) as e:
        raise _file_error(src, None, f"not a valid UTF-8 CSV file: {e}") from e


def read_csv(path: Path, entity: str, columns: Iterable[str]) -> tuple[list[Row], list[RowError]]:
    """Rows of a CSV file holding one section, its header naming the fields; empty cells are absent."""
    src = str(path)
    allowed = set(columns)
    records = csv_lines(path)
    if not records or not any(c.strip() for c in records[0][1]):
        return [], [RowError(src, 1, entity, None, None, "missing header row")]
    header = [h.strip() for h in records[0][1]]
    errors = [
        RowError(src, 1, entity, None, h or "(empty)", f"unknown column; expected some of {sorted(allowed)}")
        for h in header
        if h not in allowed
    ]
    rows = []
    for line, cells in records[1:]:
        if len(cells) > len(header):
            errors.append(RowError(src, line, entity, None, None, "more cells than columns"))
            continue
        values = {h: c.strip() for h, c in zip(header, cells, strict=False) if c.strip() != ""}
        if values:
            rows.append(Row(values, line))
    return rows, errors


def rows_from_data(
    data: Mapping[str, Iterable[Mapping[str, Any]]], allowed: Sequence[str], source: str
) -> tuple[dict[str, list[Row]], list[RowError]]:
    """Already-parsed sections (as in a YAML file, e.g. an API request body): rows are numbered, not lined."""
    sections: dict[str, list[Row]] = {}
    errors: list[RowError] = []
    for name, rows in data.items():
        if name not in allowed:
            errors.append(RowError(source, None, name, None, None, f"unknown section; expected one of {allowed}"))
            continue
        sections[name] = [Row(dict(r), None, dict(r)) for r in rows]
    return sections, errors


def reporter(errors: list[RowError], source: str, entity: str, index: int | None, row: Row) -> Report:
    """The `err(field, message, kind=...)` function of one row."""

    def err(fld: str | None, message: str, kind: ErrorKind = "invalid") -> None:
        errors.append(RowError(source, row.line_of(fld), entity, index, fld, message, kind))

    return err
