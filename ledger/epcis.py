"""EPCIS 2.0 interchange: trace events as GS1 EPCIS JSON-LD documents, and back.

Events are plain EPCIS 2.0 JSON dicts (the trace domain builds them, see ``ledger.records.epcis_event``), so this
module does not depend on the database models. Three forms of one event:

- input: what a caller writes; CBV bare words, CBV URNs, CURIEs, EPC URNs, aware datetimes are all accepted;
- normalised (``normalise_event``, what ``from_document`` returns): vocabulary values (bizStep, disposition,
  business transaction and source/destination types, ...) as full URIs, EPC URNs as canonical GS1 Digital Link
  URIs, CURIE values as full IRIs, extension keys in the project namespace as ``{prefix}:name`` and any other as a
  full IRI, times as RFC 3339 with their own offset, integral quantities as integers, keys in canonical order;
- document (``to_document``): vocabulary values (CBV business steps, dispositions, business transaction and
  source/destination types, ...) and the project's steps as full URIs (``https://ref.gs1.org/cbv/BizStep-shipping``,
  ``https://w3id.org/village-trace/voc/BizStep-drying``), never the bare words or CURIEs a reader must expand;
  extension keys as ``{prefix}:name`` with the prefix declared in the document's ``@context``.
  On import all three spellings of a vocabulary value (bare word, CURIE, full URI) are accepted, with one hash
  (CBV URNs too in ``normalise_event``; GS1's JSON schema refuses them in a document).

Every exported event carries its GS1 event hash as ``eventID`` (``ledger.epcis_hash``); the hash is the same for
all three forms. Documents are checked against GS1's EPCIS 2.0 JSON schema and expand as JSON-LD offline: the
vendored GS1 context (``ledger/data/epcis``) answers GS1's context URLs and any other remote document is refused.

Lot identifiers (``epcClass``) are ``ledger.codes.canonical_lot_uri``: ``https://id.gs1.org/01/{gtin14}/10/{lot}``
with a GTIN, ``{id_base}/t/{code}`` (the project identifier base of ledger/data/vocab.yaml) without one.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from functools import cache
from typing import Any

import jsonschema_rs
from pyld import jsonld

from ledger import epcis_hash
from ledger.epcis_dl import dl_normalise
from ledger.epcis_hash import (
    DATA_DIR,
    EventHashError,
    expand_curie,
    expand_value,
    gs1_prefixes,
    hash_algorithm,
    parse_time,
    split_iri,
    vocab_words,
)

__all__ = [
    "GS1_CONTEXT_URL",
    "EpcisError",
    "document_loader",
    "event_hash",
    "event_prehash",
    "expand",
    "from_document",
    "normalise_event",
    "project_namespace",
    "to_document",
    "validate_document",
]

GS1_CONTEXT_URL = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
CONTEXT_FILES = {
    GS1_CONTEXT_URL: "epcis-context-2.0.0.jsonld",
    "https://ref.gs1.org/standards/epcis/epcis-context.jsonld": "epcis-context.jsonld",
    "https://gs1.github.io/EPCIS/epcis-context.jsonld": "epcis-context.jsonld",
}
SCHEMA_FILE = "EPCIS-JSON-Schema.json"
EVENT_TYPES = ("ObjectEvent", "AggregationEvent", "TransformationEvent", "TransactionEvent", "AssociationEvent")
# Standard event keys in the order we write them; extensions follow, sorted.
_EVENT_KEYS = (
    "type",
    "eventID",
    "eventTime",
    "eventTimeZoneOffset",
    "recordTime",
    "certificationInfo",
    "errorDeclaration",
    "parentID",
    "epcList",
    "inputEPCList",
    "childEPCs",
    "quantityList",
    "childQuantityList",
    "inputQuantityList",
    "outputEPCList",
    "outputQuantityList",
    "action",
    "transformationID",
    "bizStep",
    "disposition",
    "persistentDisposition",
    "readPoint",
    "bizLocation",
    "bizTransactionList",
    "sourceList",
    "destinationList",
    "sensorElementList",
    "ilmd",
)
_IDENTIFIER_PATHS = {
    ("parentID",),
    ("epcList",),
    ("inputEPCList",),
    ("outputEPCList",),
    ("childEPCs",),
    ("quantityList", "epcClass"),
    ("childQuantityList", "epcClass"),
    ("inputQuantityList", "epcClass"),
    ("outputQuantityList", "epcClass"),
    ("readPoint", "id"),
    ("bizLocation", "id"),
    ("sourceList", "source"),
    ("destinationList", "destination"),
}
_QUANTITY_PATHS = {
    (q, "quantity") for q in ("quantityList", "childQuantityList", "inputQuantityList", "outputQuantityList")
}
_TYPED_ENTRIES = {("bizTransactionList",), ("sourceList",), ("destinationList",)}
_TIME_PATHS = {
    ("eventTime",),
    ("recordTime",),
    ("errorDeclaration", "declarationTime"),
    ("sensorElementList", "sensorMetadata", "time"),
    ("sensorElementList", "sensorMetadata", "startTime"),
    ("sensorElementList", "sensorMetadata", "endTime"),
    ("sensorElementList", "sensorReport", "time"),
}
_OFFSET = re.compile(r"^[+-](0\d|1[0-4]):[0-5]\d$")


class EpcisError(ValueError):
    """An EPCIS document or event that cannot be used; ``errors`` lists (JSON pointer, message), every problem."""

    def __init__(self, errors: Iterable[tuple[str, str]]) -> None:
        self.errors = list(errors)
        shown = "; ".join(f"{path or '/'}: {message}" for path, message in self.errors[:10])
        more = f" (and {len(self.errors) - 10} more)" if len(self.errors) > 10 else ""
        super().__init__(f"{len(self.errors)} EPCIS error(s): {shown}{more}")


def pointer(*parts: str | int) -> str:
    """RFC 6901 JSON pointer of a path (keys are IRIs, so '/' and '~' are escaped)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


# --- the project namespace ---------------------------------------------------------------------------------------


def project_namespace() -> tuple[str, str]:
    """(prefix, namespace IRI) of the project vocabulary, from ledger/data/vocab.yaml."""
    from ledger.vocab import get_vocab

    vocab = get_vocab()
    return vocab.prefix, vocab.namespace


def _known_prefixes(declared: Mapping[str, str] | None = None) -> dict[str, str]:
    prefix, namespace = project_namespace()
    return {**gs1_prefixes(), prefix: namespace, **(declared or {})}


def event_hash(
    event: Mapping[str, Any], prefixes: Mapping[str, str] | None = None, *, algorithm: str = "sha-256"
) -> str:
    """The GS1 event hash ``ni:///sha-256;<hex>?ver=CBV2.0`` of an event in any of its forms.

    The project prefix (``vt:``) and GS1's are known; ``prefixes`` adds others (a document's ``@context``).
    """
    return epcis_hash.event_hash(event, _known_prefixes(prefixes), algorithm=algorithm)


def event_prehash(event: Mapping[str, Any], prefixes: Mapping[str, str] | None = None) -> str:
    """The canonical pre-hash string of an event (what ``event_hash`` digests), for inspection."""
    return epcis_hash.event_prehash(event, _known_prefixes(prefixes))


# --- vendored GS1 files, JSON-LD -----------------------------------------------------------------------------------


@cache
def _data_file(name: str) -> Any:
    return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))


class RemoteDocumentRefused(jsonld.JsonLdError):
    """JSON-LD processing asked for a remote document that is not one of the vendored GS1 contexts."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(
            f"refusing to load the remote JSON-LD document {url!r}: this runs offline and only GS1's EPCIS 2.0 "
            f"context is available ({', '.join(CONTEXT_FILES)})",
            "jsonld.LoadDocumentError",
            {"url": url},
            code="loading document failed",
        )


def document_loader(url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """PyLD document loader serving the vendored GS1 EPCIS context for GS1's context URLs; refuses the rest."""
    name = CONTEXT_FILES.get(url)
    if name is None:
        raise RemoteDocumentRefused(url)
    return {
        "contentType": "application/ld+json",
        "contextUrl": None,
        "documentUrl": url,
        "document": copy.deepcopy(_data_file(name)),
    }


def expand(doc: Mapping[str, Any]) -> list[Any]:
    """JSON-LD expansion of an EPCIS document, offline (``document_loader``); EpcisError when it fails."""
    try:
        return jsonld.expand(copy.deepcopy(dict(doc)), {"documentLoader": document_loader})
    except jsonld.JsonLdError as e:
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, RemoteDocumentRefused):
            cause = cause.__cause__
        message = cause.args[0] if cause is not None else f"JSON-LD expansion failed: {e.args[0] if e.args else e}"
        raise EpcisError([(pointer("@context"), message)]) from e


@cache
def _validator() -> Any:
    return jsonschema_rs.validator_for(_data_file(SCHEMA_FILE), validate_formats=True)


def _describe(err: Any) -> str:
    """A schema error in words: the offending property name, or what each alternative wanted."""
    kind = err.kind
    if kind.name == "propertyNames":
        inner = kind.as_dict().get("error")
        name = getattr(inner, "instance", None)
        if isinstance(name, str):
            return f"property {name!r} is not allowed here (not a field of this type, and not a namespaced extension)"
    if kind.name == "anyOf":
        wanted = []
        for branch in getattr(kind, "context", []) or []:
            for sub in branch:
                if len(sub.message) <= 200 and sub.message not in wanted:
                    wanted.append(sub.message)
        if wanted:
            return "matches none of the allowed forms: " + "; or ".join(wanted[:6])
    message = err.message
    return message if len(message) <= 300 else message[:297] + "..."


def _schema_errors(doc: Any) -> list[tuple[str, str]]:
    errors = {(pointer(*err.instance_path), f"schema: {_describe(err)}") for err in _validator().iter_errors(doc)}
    return sorted(errors)


def validate_document(doc: Any) -> None:
    """Check a document against GS1's EPCIS 2.0 JSON schema (formats included); EpcisError with every violation."""
    errors = _schema_errors(doc)
    if errors:
        raise EpcisError(errors)


# --- normalised form ---------------------------------------------------------------------------------------------


def _format_time(t: datetime) -> str:
    if t.microsecond % 1000:
        return t.isoformat(timespec="microseconds")
    return t.isoformat(timespec="milliseconds" if t.microsecond else "seconds")


class _Normaliser:
    def __init__(self, prefixes: Mapping[str, str], base: str) -> None:
        self.prefixes = prefixes
        self.project_prefix, self.project_ns = project_namespace()
        self.base = base
        self.errors: list[tuple[str, str]] = []

    def error(self, at: tuple[str | int, ...], message: str) -> None:
        self.errors.append((self.base + pointer(*at), message))

    def key(self, key: Any, at: tuple[str | int, ...]) -> str:
        if not isinstance(key, str):
            self.error(at, f"keys are strings, got {key!r}")
            return str(key)
        if ":" not in key:
            return key  # an EPCIS term
        head, _, local = key.partition(":")
        iri = expand_curie(key, self.prefixes)
        if iri != key and split_iri(iri) != (self.prefixes[head], local):
            # The hash reads prefix:a/b as {ns}a/b but the IRI ns+a/b as {ns+a/}b: no one form keeps both.
            self.error(
                at,
                f"extension key {key!r} has no stable full form (its prefix IRI must end in / or #, "
                "its local name must not contain / # :)",
            )
            return key
        if iri.startswith(self.project_ns) and len(iri) > len(self.project_ns):
            return f"{self.project_prefix}:{iri[len(self.project_ns) :]}"
        return iri

    def value(self, value: Any, path: tuple[str, ...], at: tuple[str | int, ...]) -> Any:
        if isinstance(value, Mapping):
            out = {}
            items = list(value.items())
            if path in _TYPED_ENTRIES:  # type first, as XML and the reference implementation write it
                items.sort(key=lambda kv: kv[0] != "type")
            for k, v in items:
                name = self.key(k, (*at, k))
                out[name] = self.value(v, (*path, name), (*at, k))
            return out
        if isinstance(value, list | tuple):
            return [self.value(v, path, (*at, i)) for i, v in enumerate(value)]
        if path in _TIME_PATHS:
            return self.time(value, at)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                self.error(at, "a datetime needs a time zone (every time carries its offset)")
            return _format_time(value)
        if isinstance(value, date):
            return value.isoformat()
        if path in _QUANTITY_PATHS and isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, str):
            return value
        if path in vocab_words():
            return expand_value(value, path, self.prefixes)
        value = expand_curie(value, self.prefixes)
        if path in _IDENTIFIER_PATHS and value.startswith("urn:epc:"):
            dl = dl_normalise(value)
            if dl is not None and dl_normalise(dl) in (dl, None):
                return dl
        return value

    def time(self, value: Any, at: tuple[str | int, ...]) -> Any:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                self.error(at, "a datetime needs a time zone (every time carries its offset)")
            return _format_time(value)
        t = parse_time(value) if isinstance(value, str) else None
        if t is None:
            self.error(at, f"expected an RFC 3339 time with offset, e.g. 2026-05-20T09:00:00+08:00, got {value!r}")
            return value
        return _format_time(t)

    def event(self, event: Any) -> dict[str, Any]:
        if not isinstance(event, Mapping):
            self.error((), f"an event is a JSON object, got {type(event).__name__}")
            return {}
        if event.get("type") not in EVENT_TYPES:
            self.error(("type",), f"event type must be one of {', '.join(EVENT_TYPES)}, got {event.get('type')!r}")
        if "eventTime" not in event:
            self.error(("eventTime",), "eventTime is required")
        body = self.value({k: v for k, v in event.items() if k != "@context"}, (), ())
        offset = body.get("eventTimeZoneOffset")
        if offset is None:
            t = parse_time(body["eventTime"]) if isinstance(body.get("eventTime"), str) else None
            if t is not None:
                body["eventTimeZoneOffset"] = t.isoformat()[-len("+08:00") :]
        elif not (isinstance(offset, str) and _OFFSET.match(offset)):
            self.error(("eventTimeZoneOffset",), f"expected an offset like +08:00 or -06:00, got {offset!r}")
        ordered = {k: body[k] for k in _EVENT_KEYS if k in body}
        ordered.update(sorted((k, v) for k, v in body.items() if k not in ordered))
        return ordered


def normalise_event(event: Mapping[str, Any], prefixes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The normalised form of one event (see the module docstring); its event hash is unchanged by it.

    ``prefixes``: CURIE prefixes in use besides GS1's and the project's (a document's ``@context`` objects).
    Raises EpcisError (paths relative to the event) for what cannot be normalised: no or unknown event type,
    a time without offset, a malformed eventTimeZoneOffset.
    """
    normaliser = _Normaliser(_known_prefixes(prefixes), "")
    out = normaliser.event(event)
    if normaliser.errors:
        raise EpcisError(normaliser.errors)
    return out


# --- documents -----------------------------------------------------------------------------------------------------


class _Compactor:
    """Normalised event -> document form: every IRI key as a CURIE whose prefix the document declares, so that
    any implementation of the event hash reads the key as {namespace}name. Values stay as they are normalised:
    vocabulary values as full URIs (a JSON-LD ``@vocab`` field takes an absolute IRI as it is)."""

    def __init__(self) -> None:
        self.prefix, self.namespace = project_namespace()
        self.used: dict[str, str] = {self.namespace: self.prefix}  # namespace -> prefix
        self._gs1 = {ns: p for p, ns in gs1_prefixes().items()}

    def context(self) -> dict[str, str]:
        return {p: ns for ns, p in self.used.items()}

    def key(self, key: str) -> str:
        split = split_iri(key)
        if split is None:
            return key
        namespace, local = split
        if namespace not in self.used:
            self.used[namespace] = self._gs1.get(namespace) or f"ns{len(self.used)}"
        return f"{self.used[namespace]}:{local}"

    def value(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {self.key(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value


def _event_id_problem(event_id: Any, event: Mapping[str, Any], prefixes: Mapping[str, str]) -> str | None:
    algorithm = hash_algorithm(event_id) if isinstance(event_id, str) else None
    if algorithm is None:
        return f"eventID {event_id!r} is not a GS1 event hash (ni:///sha-256;<hex>?ver=CBV2.0)"
    expected = event_hash(event, prefixes, algorithm=algorithm)
    if event_id.lower() != expected.lower():
        return f"eventID does not match the event's content: its event hash is {expected}, the eventID is {event_id}"
    return None


def to_document(events: Iterable[Mapping[str, Any]], *, created: datetime, sender: str | None = None) -> dict[str, Any]:
    """An EPCISDocument (JSON-LD) of the events, each with its event hash as ``eventID``.

    ``created`` must be timezone-aware. Raises EpcisError (paths as in the document) for an event that cannot be
    normalised, an eventID that is not the event's hash, two events that are the same event, or (a bug, then) a
    document that does not validate against GS1's schema.
    """
    if not isinstance(created, datetime) or created.tzinfo is None:
        raise EpcisError([(pointer("creationDate"), "creationDate needs a timezone-aware datetime")])
    compactor = _Compactor()
    prefixes = _known_prefixes()
    errors: list[tuple[str, str]] = []
    out_events: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for i, event in enumerate(events):
        at = pointer("epcisBody", "eventList", i)
        normaliser = _Normaliser(prefixes, at)
        body = normaliser.event(event)
        if normaliser.errors:
            errors.extend(normaliser.errors)
            continue
        given = body.pop("eventID", None)
        digest = event_hash(body, prefixes)
        if given is not None and (problem := _event_id_problem(given, body, prefixes)):
            errors.append((at + pointer("eventID"), problem))
            continue
        if digest in seen:
            errors.append((at, f"the same event as {seen[digest]} (event hash {digest})"))
            continue
        seen[digest] = at
        compact = {"type": body["type"], "eventID": given or digest}
        compact.update(compactor.value({k: v for k, v in body.items() if k != "type"}))
        out_events.append(compact)
    if errors:
        raise EpcisError(errors)
    doc: dict[str, Any] = {
        "@context": [GS1_CONTEXT_URL, compactor.context()],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": _format_time(created),
    }
    if sender is not None:
        doc["sender"] = sender
    doc["epcisBody"] = {"eventList": out_events}
    validate_document(doc)
    return doc


def _load(doc: Any) -> Any:
    if isinstance(doc, bytes | bytearray | memoryview):
        try:
            doc = bytes(doc).decode("utf-8")
        except UnicodeDecodeError as e:
            raise EpcisError([("", f"not JSON: not UTF-8 ({e})")]) from e
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError as e:
            raise EpcisError([("", f"not JSON: {e}")]) from e
    return doc


def _document_prefixes(doc: Mapping[str, Any]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    context = doc.get("@context")
    items = context if isinstance(context, list) else [context]
    prefixes: dict[str, str] = {}
    errors: list[tuple[str, str]] = []
    has_gs1 = False
    for i, item in enumerate(items):
        at = pointer("@context", i) if isinstance(context, list) else pointer("@context")
        if isinstance(item, str):
            if item in CONTEXT_FILES:
                has_gs1 = True
            else:
                errors.append((at, f"unknown remote context {item!r}; only GS1's EPCIS 2.0 context is resolvable"))
        elif isinstance(item, Mapping):
            prefixes.update({k: v for k, v in item.items() if isinstance(v, str) and not k.startswith("@")})
    if not has_gs1 and not errors:
        errors.append((pointer("@context"), f"the GS1 EPCIS context ({GS1_CONTEXT_URL}) is missing"))
    return prefixes, errors


def from_document(doc: Mapping[str, Any] | str | bytes) -> list[dict[str, Any]]:
    """The events of an EPCISDocument (a dict or its JSON text), normalised, each with its ``eventID``.

    The document must validate against GS1's EPCIS 2.0 JSON schema and name only GS1's context as a remote
    context; each eventID must be the event's GS1 event hash (a missing one is computed); no event may occur
    twice. Otherwise EpcisError lists every problem with its JSON pointer.
    """
    doc = _load(doc)
    if not isinstance(doc, Mapping):
        raise EpcisError([("", f"an EPCIS document is a JSON object, got {type(doc).__name__}")])
    validate_document(doc)
    if doc.get("type") != "EPCISDocument":
        raise EpcisError([(pointer("type"), f"expected an EPCISDocument, got {doc.get('type')!r}")])
    declared, errors = _document_prefixes(doc)
    if errors:
        raise EpcisError(errors)
    prefixes = _known_prefixes(declared)
    seen: dict[str, str] = {}
    events: list[dict[str, Any]] = []
    for i, event in enumerate(doc["epcisBody"]["eventList"]):
        at = pointer("epcisBody", "eventList", i)
        try:
            digest = event_hash(event, prefixes)
        except EventHashError as e:
            errors.append((at, str(e)))
            continue
        given = event.get("eventID")
        if given is not None and (problem := _event_id_problem(given, event, prefixes)):
            errors.append((at + pointer("eventID"), problem))
        if digest in seen:
            errors.append((at, f"duplicate event: the same event as {seen[digest]} (event hash {digest})"))
            continue
        seen[digest] = at
        normaliser = _Normaliser(prefixes, at)
        body = normaliser.event({k: v for k, v in event.items() if k != "eventID"})
        errors.extend(normaliser.errors)
        events.append({"type": body.get("type"), "eventID": given or digest, **body})
    if errors:
        raise EpcisError(errors)
    return events
