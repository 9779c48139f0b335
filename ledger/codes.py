"""Trace codes and GS1 Digital Link URIs for lots, and the QR codes that carry them.

A lot is named on its label by one URI (DESIGN "Trace codes"):

- `{base}/01/{gtin14}/10/{lot_no}` when its product has a GTIN (GS1 Digital Link),
- `{base}/t/{code}` otherwise, where `code` is a short trace code.

A short code is 10 Crockford base32 data characters (50 random bits) and one Crockford
check character (the value modulo 37, symbols `0-9A-Z` without I L O U, then `*~$=U`).
Because 37 is prime, every single-character substitution and every transposition of two
adjacent characters changes the check. Humans may type it in any case, with hyphens, and
with I/L for 1 and O for 0; `normalize_code` turns all of that into the one stored form.

Digital Link parsing and GTIN check digits are done by `biip`, the library made for it.
Lot numbers are GS1 AI (10) values: 1 to 20 characters of the GS1 "character set 82",
percent-encoded in the path as the Digital Link standard requires (a "/" becomes "%2F").

Hashed records never use a deployment's own base URL (it may change): they use
`canonical_lot_uri`, whose base is GS1's canonical `https://id.gs1.org` for GTIN lots and the
project's identifier base (ledger/data/vocab.yaml) for code lots.
"""

from __future__ import annotations

import io
import re
import secrets
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

import segno
from biip import ParseError
from biip.checksums import gs1_standard_check_digit
from biip.gs1_digital_link_uris import GS1DigitalLinkURI
from biip.gtin import Gtin

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CHECK_SYMBOLS = ALPHABET + "*~$=U"
DATA_LENGTH = 10
CODE_LENGTH = DATA_LENGTH + 1
_VALUE = {c: i for i, c in enumerate(CHECK_SYMBOLS)}
_ALIASES = str.maketrans({"I": "1", "L": "1", "O": "0"})
GS1_CANONICAL_BASE = "https://id.gs1.org"
# GS1 AI (10) batch/lot: 1..20 characters of GS1 AI encodable character set 82.
LOT_NO_PATTERN = r"^[!\"%-?A-Z_a-z]{1,20}$"
_LOT_NO = re.compile(LOT_NO_PATTERN)


class TraceCodeError(ValueError):
    """A short trace code that is malformed or whose check character does not match."""


class DigitalLinkError(ValueError):
    """A URI that is not a trace URI we can resolve (syntax, missing parts, bad values)."""


class GtinCheckDigitError(DigitalLinkError):
    """A GTIN whose check digit is wrong; the message says which digit was expected."""

    def __init__(self, gtin: str, reason: str) -> None:
        self.gtin = gtin
        super().__init__(reason)


# ---------------------------------------------------------------- short codes


def check_char(data: str) -> str:
    """The Crockford check character of normalized data characters."""
    value = 0
    for c in data:
        value = value * 32 + _VALUE[c]
    return CHECK_SYMBOLS[value % 37]


def new_code() -> str:
    """A fresh random code (10 data characters + check), in its stored form."""
    data = "".join(ALPHABET[secrets.randbelow(32)] for _ in range(DATA_LENGTH))
    return data + check_char(data)


def normalize_code(text: str) -> str:
    """The stored form of a typed code: upper case, hyphens removed, I/L read as 1 and O as 0.

    Raises TraceCodeError with the reason when the length, a character or the check is wrong.
    """
    code = text.strip().replace("-", "").upper().translate(_ALIASES)
    if len(code) != CODE_LENGTH:
        raise TraceCodeError(f"a trace code has {CODE_LENGTH} characters, got {len(code)} in {text!r}")
    data, check = code[:DATA_LENGTH], code[DATA_LENGTH]
    for i, c in enumerate(data):
        if c not in ALPHABET:
            raise TraceCodeError(f"character {i + 1} of {text!r} ({c!r}) is not a Crockford base32 digit")
    if check not in CHECK_SYMBOLS:
        raise TraceCodeError(f"the check character of {text!r} ({check!r}) is not a Crockford check symbol")
    expected = check_char(data)
    if check != expected:
        raise TraceCodeError(f"wrong check character in {text!r}: expected {expected!r}, got {check!r} (mistyped?)")
    return code


def format_code(code: str) -> str:
    """The printed form, grouped for reading aloud: XXXX-XXXX-XXX."""
    code = normalize_code(code)
    return f"{code[:4]}-{code[4:8]}-{code[8:]}"


# ---------------------------------------------------------------- GTINs and Digital Link


def gtin_check_digit(payload: str) -> int:
    """The GS1 check digit of a GTIN without its last digit."""
    return gs1_standard_check_digit(payload)


def normalize_gtin(value: str) -> str:
    """A GTIN-8/12/13/14 as its 14-digit form; GtinCheckDigitError or DigitalLinkError with the reason."""
    text = str(value).strip()
    if not re.fullmatch(r"\d{8}|\d{12,14}", text):
        raise DigitalLinkError(f"a GTIN has 8, 12, 13 or 14 digits, got {text!r}")
    try:
        return Gtin.parse(text).as_gtin_14()
    except ParseError as e:
        if "check digit" in str(e):
            raise GtinCheckDigitError(text, str(e)) from e
        raise DigitalLinkError(str(e)) from e


def check_lot_no(lot_no: str) -> str:
    """A lot number a Digital Link can carry (GS1 AI 10); ValueError otherwise."""
    if not _LOT_NO.fullmatch(lot_no):
        raise ValueError(f"lot number {lot_no!r}: 1 to 20 characters of GS1 character set 82 (no spaces, ASCII only)")
    return lot_no


def build_uri(base: str, *, gtin: str | None = None, lot_no: str | None = None, code: str | None = None) -> str:
    """`{base}/01/{gtin14}/10/{lot_no}` when a GTIN is given, else `{base}/t/{code}`."""
    base = base.rstrip("/")
    if gtin:
        if lot_no is None:
            raise ValueError("a GTIN lot URI needs its lot number")
        gtin14 = normalize_gtin(gtin)
        return f"{base}/01/{gtin14}/10/{quote(check_lot_no(lot_no), safe='')}"
    if code is None:
        raise ValueError("a lot without a GTIN is named by its trace code")
    return f"{base}/t/{normalize_code(code)}"


class _Product(Protocol):
    gtin: str | None


class _Lot(Protocol):
    code: str
    lot_no: str

    @property
    def product(self) -> _Product | None: ...


def lot_uri(base: str, lot: _Lot) -> str:
    """The URI printed on a lot's label (its product must be loadable: `lot.product`)."""
    gtin = lot.product.gtin if lot.product is not None else None
    return build_uri(base, gtin=gtin, lot_no=lot.lot_no, code=lot.code)


def canonical_lot_uri(lot: _Lot) -> str:
    """The deployment-independent URI used inside hashed records."""
    from ledger.vocab import get_vocab  # the identifier base is vocabulary data

    gtin = lot.product.gtin if lot.product is not None else None
    base = GS1_CANONICAL_BASE if gtin else get_vocab().id_base
    return build_uri(base, gtin=gtin, lot_no=lot.lot_no, code=lot.code)


def parse_uri(uri: str) -> tuple[str, str | None] | str:
    """What a trace URI names: `(gtin14, lot_no)` for a Digital Link (lot_no None when the URI names
    only the product), or the normalized code for `.../t/{code}`.

    Raises GtinCheckDigitError for a wrong GTIN check digit, TraceCodeError for a bad code and
    DigitalLinkError for anything else that is not a trace URI; each carries the reason.
    """
    parts = urlsplit(uri.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DigitalLinkError(f"expected an http(s) URI, got {uri!r}")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) >= 2 and segments[-2] == "t":
        return normalize_code(unquote(segments[-1]))
    try:
        dl = GS1DigitalLinkURI.parse(uri.strip())
    except ParseError as e:
        raise DigitalLinkError(f"not a GS1 Digital Link URI: {e}") from e
    gtin_es = dl.element_strings.get(ai="01")
    if gtin_es is None:
        raise DigitalLinkError(f"the Digital Link URI names no GTIN (AI 01): {uri!r}")
    if gtin_es.gtin is None:
        reason = gtin_es.gtin_error or f"invalid GTIN {gtin_es.value!r}"
        if "check digit" in reason:
            raise GtinCheckDigitError(gtin_es.value, reason)
        raise DigitalLinkError(reason)
    lot_es = dl.element_strings.get(ai="10")
    return gtin_es.gtin.as_gtin_14(), lot_es.value if lot_es is not None else None


# ---------------------------------------------------------------- QR codes


def _qr(uri: str) -> segno.QRCode:
    # Error correction M survives a scuffed bag label; never a Micro QR (phones cannot read them).
    return segno.make(uri, error="m", micro=False, boost_error=False)


def qr_svg(uri: str) -> bytes:
    """An SVG image of the QR code encoding `uri`."""
    buf = io.BytesIO()
    _qr(uri).save(buf, kind="svg", scale=4, border=4, xmldecl=True)
    return buf.getvalue()


def qr_png(uri: str, scale: int = 8) -> bytes:
    """A PNG image of the QR code encoding `uri`, `scale` pixels per module."""
    buf = io.BytesIO()
    _qr(uri).save(buf, kind="png", scale=scale, border=4)
    return buf.getvalue()


def qr_terminal(uri: str) -> str:
    """The QR code as Unicode half blocks, for printing in a terminal (light modules as blocks)."""
    buf = io.StringIO()
    _qr(uri).terminal(out=buf, compact=True)
    return buf.getvalue()
