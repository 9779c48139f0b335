"""The trace vocabulary (ledger/data/vocab.yaml): business steps, dispositions, units, typed attributes.

Everything a person may type for a step ("spraying", "commissioning", "cbv:BizStep-packing",
"urn:epcglobal:cbv:bizstep:shipping", a full URI) is normalized to ONE full URI before it is stored
or hashed, and step attributes are checked against the step's declared types and rounded to their
declared decimals, so the same fact is always stored, and hashed, the same way.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

VOCAB_FILE = Path(__file__).with_name("data") / "vocab.yaml"
EVENT_TYPES = ("ObjectEvent", "AggregationEvent", "TransformationEvent")
ATTRIBUTE_TYPES = ("str", "int", "float", "bool", "enum", "date")
READ_POINTS = ("plot", "facility", "any")
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


class UnknownTerm(ValueError):
    """A step, disposition or unit that the vocabulary does not have."""


class AttributeErrors(ValueError):
    """Step attributes that do not match the step's types; `errors` lists (attribute, message)."""

    def __init__(self, step: str, errors: list[tuple[str, str]]) -> None:
        self.step = step
        self.errors = errors
        super().__init__("; ".join(f"{step}: attribute '{a}': {m}" if a else f"{step}: {m}" for a, m in errors))


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    type: str
    required: bool = False
    min: float | None = None
    max: float | None = None
    decimals: int = 3
    values: tuple[str, ...] = ()
    unit: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Step:
    name: str
    uri: str
    namespace: str  # cbv | project
    event_types: tuple[str, ...] = EVENT_TYPES
    read_point: str = "any"
    attributes: Mapping[str, AttributeSpec] = field(default_factory=dict)
    description: str | None = None


@dataclass(frozen=True)
class Unit:
    name: str
    uom: str | None  # UN/CEFACT Rec. 20 code for EPCIS; None for a count of items
    decimals: int
    kg: float | None = None  # mass of one unit; None when it depends on the product (a bag)


@dataclass
class Vocabulary:
    prefix: str
    namespace: str  # the project vocabulary IRI, ending in "/" or "#"
    id_base: str  # the project identifier base (no trailing slash)
    bizstep_base: str
    disposition_base: str
    steps: dict[str, Step]  # by short name
    dispositions: dict[str, str]  # short name -> URI
    units: dict[str, Unit]
    lineage: dict[str, Any] = field(default_factory=dict)  # relation -> max yield (or by facility kind)
    _by_uri: dict[str, Step] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_uri = {s.uri: s for s in self.steps.values()}

    # ---- steps

    def step(self, name_or_uri: str) -> Step:
        """The step named by a short name, a CBV or project compact IRI, an EPCIS 1.x URN or a full URI."""
        if not isinstance(name_or_uri, str) or not name_or_uri.strip():
            raise UnknownTerm(f"a business step must be a non-empty string, got {name_or_uri!r}")
        text = name_or_uri.strip()
        if text in self._by_uri:
            return self._by_uri[text]
        name, namespace = self._split(text, "BizStep-", "urn:epcglobal:cbv:bizstep:", self.bizstep_base)
        found = self.steps.get(name.lower())
        if found is None:
            close = difflib.get_close_matches(name.lower(), list(self.steps), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownTerm(f"unknown business step {text!r}{hint}")
        if namespace is not None and namespace != found.namespace:
            raise UnknownTerm(f"{text!r}: {found.name!r} is a {found.namespace} step, its URI is {found.uri}")
        return found

    def _split(self, text: str, local: str, urn: str, cbv_base: str) -> tuple[str, str | None]:
        """(short name, namespace it was written in, or None for a bare name)."""
        project_base = self.namespace + local
        for prefix, namespace in (
            (cbv_base, "cbv"),
            (urn, "cbv"),
            (f"cbv:{local}", "cbv"),
            (project_base, "project"),
            (f"{self.prefix}:{local}", "project"),
        ):
            if text.lower().startswith(prefix.lower()):  # the name is checked case-insensitively
                return text[len(prefix) :], namespace
        if "://" in text or text.startswith("urn:"):
            raise UnknownTerm(
                f"{text!r} is not a URI of this vocabulary (CBV {cbv_base}..., project {project_base}...)"
            )
        return text.removeprefix(local), None

    def normalize_step(self, name_or_uri: str) -> str:
        return self.step(name_or_uri).uri

    def normalize_disposition(self, name_or_uri: str) -> str:
        if not isinstance(name_or_uri, str) or not name_or_uri.strip():
            raise UnknownTerm(f"a disposition must be a non-empty string, got {name_or_uri!r}")
        text = name_or_uri.strip()
        if text in self.dispositions.values():
            return text
        name, namespace = self._split(text, "Disp-", "urn:epcglobal:cbv:disp:", self.disposition_base)
        uri = self.dispositions.get(name.lower())
        if uri is None or namespace == "project":
            close = difflib.get_close_matches(name.lower(), list(self.dispositions), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownTerm(f"unknown disposition {text!r}{hint}")
        return uri

    def short_name(self, uri: str) -> str:
        """The short name of a step or disposition URI (for display)."""
        if uri in self._by_uri:
            return self._by_uri[uri].name
        return next((n for n, u in self.dispositions.items() if u == uri), uri)

    def unit(self, name: str) -> Unit:
        unit = self.units.get(name)
        if unit is None:
            raise UnknownTerm(f"unknown unit {name!r}; expected one of {', '.join(self.units)}")
        return unit

    def attribute_iri(self, name: str) -> str:
        return self.namespace + name

    # ---- attributes

    def validate_attributes(self, step: str, attrs: Mapping[str, Any] | None) -> dict[str, Any]:
        """The attributes in stored form (sorted, floats rounded to their decimals, dates as text).

        Raises AttributeErrors listing every problem: unknown names, missing required ones,
        wrong types, values out of range or not among an enum's values.
        """
        spec = self.step(step)
        if attrs is None:
            attrs = {}
        if not isinstance(attrs, Mapping):
            raise AttributeErrors(spec.name, [("", f"attributes must be a mapping, got {type(attrs).__name__}")])
        errors: list[tuple[str, str]] = []
        out: dict[str, Any] = {}
        for name in attrs:
            if name not in spec.attributes:
                known = ", ".join(spec.attributes) or "none"
                errors.append((str(name), f"unknown attribute for step {spec.name}; its attributes: {known}"))
        for name, aspec in spec.attributes.items():
            value = attrs.get(name)
            if value is None:
                if aspec.required:
                    errors.append((name, "is required"))
                continue
            try:
                out[name] = _coerce(aspec, value)
            except ValueError as e:
                errors.append((name, str(e)))
        if errors:
            raise AttributeErrors(spec.name, errors)
        return dict(sorted(out.items()))


def _coerce(spec: AttributeSpec, value: Any) -> Any:
    got = f"(got {value!r})"
    if spec.type == "str":
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"must be non-empty text {got}")
        return value.strip()
    if spec.type == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false {got}")
        return value
    if spec.type == "enum":
        if value not in spec.values:
            raise ValueError(f"must be one of {', '.join(spec.values)} {got}")
        return value
    if spec.type == "date":
        if isinstance(value, datetime) or not isinstance(value, date | str):
            raise ValueError(f"must be a date YYYY-MM-DD {got}")
        try:
            return (value if isinstance(value, date) else date.fromisoformat(value)).isoformat()
        except ValueError:
            raise ValueError(f"must be a date YYYY-MM-DD {got}") from None
    # numbers
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be {'an integer' if spec.type == 'int' else 'a number'} {got}")
    if spec.type == "int":
        if not isinstance(value, int):
            raise ValueError(f"must be an integer {got}")
        number: int | float = value
    else:
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number {got}")
        number = round(float(value), spec.decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    if spec.min is not None and number < spec.min:
        raise ValueError(f"must be at least {spec.min:g} {got}")
    if spec.max is not None and number > spec.max:
        raise ValueError(f"must be at most {spec.max:g} {got}")
    return number


# ---------------------------------------------------------------- loading


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+$")]
Yield = Annotated[int | float, Field(gt=0, le=1)]  # an int stays an int: records print as they did


class AttributeFile(_File):
    """One typed step attribute as the file writes it."""

    type: Literal["str", "int", "float", "bool", "enum", "date"]
    required: bool = False
    min: int | float | None = None
    max: int | float | None = None
    decimals: int = Field(3, ge=0, le=12)
    values: tuple[str, ...] = ()
    unit: str | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _enum(self) -> AttributeFile:
        if (self.type == "enum") != bool(self.values):
            raise ValueError("enum needs values (and only enum)")
        return self


class StepFile(_File):
    namespace: Literal["cbv", "project"]
    description: str | None = None
    event_types: tuple[Literal["ObjectEvent", "AggregationEvent", "TransformationEvent"], ...] = EVENT_TYPES
    read_point: Literal["plot", "facility", "any"] = "any"
    attributes: dict[Name, AttributeFile] = Field(default_factory=dict)


class ProjectFile(_File):
    prefix: Name
    vocabulary: str
    id_base: str

    @model_validator(mode="after")
    def _iri(self) -> ProjectFile:
        if not self.vocabulary.endswith(("/", "#")):
            raise ValueError("the project vocabulary IRI must end with / or #")
        return self


class CbvFile(_File):
    bizstep_base: str
    disposition_base: str
    steps: tuple[Name, ...]
    dispositions: tuple[Name, ...]


class UnitFile(_File):
    uom: str | None
    decimals: int = Field(ge=0, le=12)
    kg: int | float | None = Field(None, gt=0)


class VocabFile(_File):
    """ledger/data/vocab.yaml, typed: a wrong key or value fails at load with its path."""

    project: ProjectFile
    cbv: CbvFile
    units: dict[Name, UnitFile]
    lineage: dict[Literal["merge", "split", "transform"], Yield | dict[Name, Yield]] = Field(default_factory=dict)
    steps: dict[Name, StepFile] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _namespaces(self) -> VocabFile:
        for name, s in self.steps.items():
            if s.namespace == "cbv" and name not in self.cbv.steps:
                raise ValueError(f"step {name!r} is not a CBV 2.0 business step")
            if s.namespace == "project" and name in self.cbv.steps:
                raise ValueError(f"project step {name!r} would shadow the CBV step of that name")
        return self


def _load(path: Path) -> Vocabulary:
    try:
        doc = VocabFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except ValidationError as e:
        raise ValueError(f"{path}: {e}") from None
    cbv, namespace = doc.cbv, doc.project.vocabulary
    steps: dict[str, Step] = {n: Step(n, cbv.bizstep_base + n, "cbv") for n in cbv.steps}
    for name, s in doc.steps.items():
        attributes = {a: AttributeSpec(name=a, **spec.model_dump()) for a, spec in s.attributes.items()}
        base = cbv.bizstep_base if s.namespace == "cbv" else namespace + "BizStep-"
        steps[name] = Step(name, base + name, s.namespace, s.event_types, s.read_point, attributes, s.description)
    return Vocabulary(
        prefix=doc.project.prefix,
        namespace=namespace,
        id_base=doc.project.id_base.rstrip("/"),
        bizstep_base=cbv.bizstep_base,
        disposition_base=cbv.disposition_base,
        steps=steps,
        dispositions={n: cbv.disposition_base + n for n in cbv.dispositions},
        units={n: Unit(n, u.uom, u.decimals, u.kg) for n, u in doc.units.items()},
        lineage={k: dict(v) if isinstance(v, dict) else v for k, v in doc.lineage.items()},
    )


@lru_cache
def get_vocab(path: Path | None = None) -> Vocabulary:
    """The vocabulary (the packaged ledger/data/vocab.yaml unless `path` is given), loaded once."""
    return _load(path or VOCAB_FILE)


def normalize_step(name_or_uri: str) -> str:
    """The full URI of a business step, from any of its accepted spellings; UnknownTerm otherwise."""
    return get_vocab().normalize_step(name_or_uri)


def normalize_disposition(name_or_uri: str) -> str:
    """The full URI of a CBV disposition; UnknownTerm otherwise."""
    return get_vocab().normalize_disposition(name_or_uri)


def validate_attributes(step: str, attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The step's attributes in stored form; AttributeErrors with every problem otherwise."""
    return get_vocab().validate_attributes(step, attrs)
