"""Trace codes (Crockford base32 + check), GS1 Digital Link build/parse, GTIN check digits, QR images."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import segno
from hypothesis import given
from hypothesis import strategies as st

from ledger import codes
from ledger.codes import (
    ALPHABET,
    CHECK_SYMBOLS,
    DigitalLinkError,
    GtinCheckDigitError,
    TraceCodeError,
    build_uri,
    canonical_lot_uri,
    format_code,
    lot_uri,
    new_code,
    normalize_code,
    normalize_gtin,
    parse_uri,
)

GTIN = "06947512300010"  # the demo's 5 kg bag (GS1 China prefix 694, check digit 0)
SET_82 = "".join(chr(c) for c in range(0x21, 0x7F) if re.fullmatch(codes.LOT_NO_PATTERN, chr(c)))
SAMPLES = [new_code() for _ in range(150)]


def _lot(code: str, lot_no: str, gtin: str | None) -> SimpleNamespace:
    return SimpleNamespace(code=code, lot_no=lot_no, product=SimpleNamespace(gtin=gtin))


# ---------------------------------------------------------------- short codes


def test_new_codes_are_valid_distinct_and_in_stored_form() -> None:
    assert len(set(SAMPLES)) == len(SAMPLES)
    for code in SAMPLES:
        assert len(code) == 11
        assert set(code[:10]) <= set(ALPHABET)
        assert code[10] in CHECK_SYMBOLS
        assert normalize_code(code) == code


def test_check_character_catches_every_single_substitution() -> None:
    caught = 0
    for code in SAMPLES:
        for i, original in enumerate(code):
            symbols = ALPHABET if i < 10 else CHECK_SYMBOLS
            for other in symbols:
                if other == original:
                    continue
                typo = code[:i] + other + code[i + 1 :]
                with pytest.raises(TraceCodeError):
                    normalize_code(typo)
                caught += 1
    assert caught == len(SAMPLES) * (10 * 31 + 36)


def test_check_character_catches_every_adjacent_transposition() -> None:
    caught = 0
    for code in SAMPLES:
        for i in range(len(code) - 1):
            if code[i] == code[i + 1]:
                continue
            swapped = code[:i] + code[i + 1] + code[i] + code[i + 2 :]
            with pytest.raises(TraceCodeError):
                normalize_code(swapped)
            caught += 1
    assert caught > len(SAMPLES) * 8


def test_check_is_value_mod_37() -> None:
    assert codes.check_char("0000000000") == "0"
    assert codes.check_char("0000000001") == "1"
    assert codes.check_char("000000000Z") == "Z"  # 31
    assert codes.check_char("0000000010") == "*"  # 32: the first of the extra check symbols * ~ $ = U
    assert codes.check_char("0000000015") == "0"  # 37
    for data in ("0000000010", "ZZZZZZZZZZ", "1234567890"):
        value = 0
        for c in data:
            value = value * 32 + ALPHABET.index(c)
        assert codes.check_char(data) == CHECK_SYMBOLS[value % 37]


def test_normalization_of_typed_codes() -> None:
    code = next(c for c in SAMPLES if c[10].isalnum())
    printed = format_code(code)
    assert re.fullmatch(r"[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z*~$=]{3}", printed)
    assert normalize_code(printed) == code
    assert normalize_code(f"  {printed.lower()}  ") == code
    assert normalize_code("-".join(code)) == code  # hyphens anywhere are ignored
    # I and L are read as 1, O as 0 (in any case)
    ones = "1111111111" + codes.check_char("1111111111")
    assert normalize_code("IiLl1IiLl1" + ones[10]) == ones
    zeros = "0000000000" + codes.check_char("0000000000")
    assert normalize_code("OoOo0OoOo0" + zeros[10]) == zeros


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ABCD-EFGH-JK", "11 characters, got 10"),
        ("ABCD-EFGH-JKMN", "11 characters, got 12"),
        ("ABCD-EFGU-JKM", "character 8"),  # U is only a check symbol
        ("ABCD-EFG#-JKM", "not a Crockford base32 digit"),
        ("ABCD-EFGH-JK#", "not a Crockford check symbol"),
    ],
)
def test_malformed_codes_are_rejected_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(TraceCodeError, match=re.escape(reason)):
        normalize_code(text)


def test_wrong_check_character_names_the_expected_one() -> None:
    code = SAMPLES[0]
    wrong = next(c for c in CHECK_SYMBOLS if c != code[10])
    with pytest.raises(TraceCodeError, match=re.escape(f"expected {code[10]!r}, got {wrong!r}")):
        normalize_code(code[:10] + wrong)


# ---------------------------------------------------------------- GTINs


def test_gtin_check_digit_and_normalization() -> None:
    assert codes.gtin_check_digit(GTIN[:-1]) == int(GTIN[-1])
    assert normalize_gtin(GTIN) == GTIN
    assert normalize_gtin(GTIN[1:]) == GTIN  # a GTIN-13 becomes its GTIN-14
    assert normalize_gtin("96385074") == "00000096385074"  # GTIN-8


def test_wrong_gtin_check_digit_is_a_specific_error_with_the_reason() -> None:
    bad = GTIN[:-1] + "7"
    with pytest.raises(GtinCheckDigitError, match="Expected 0, got 7") as e:
        normalize_gtin(bad)
    assert e.value.gtin == bad
    with pytest.raises(GtinCheckDigitError, match="Expected 0, got 7"):
        parse_uri(f"https://trace.example/01/{bad}/10/2026-M01-A")
    with pytest.raises(DigitalLinkError, match="8, 12, 13 or 14 digits"):
        normalize_gtin("123")


# ---------------------------------------------------------------- Digital Link


def test_lot_uri_with_and_without_gtin() -> None:
    code = SAMPLES[1]
    assert lot_uri("https://trace.example/", _lot(code, "2026-M01-A", GTIN)) == (
        f"https://trace.example/01/{GTIN}/10/2026-M01-A"
    )
    assert lot_uri("https://trace.example", _lot(code, "2026-D01", None)) == f"https://trace.example/t/{code}"
    assert canonical_lot_uri(_lot(code, "2026-M01-A", GTIN)) == f"https://id.gs1.org/01/{GTIN}/10/2026-M01-A"
    assert canonical_lot_uri(_lot(code, "x", None)) == f"https://w3id.org/village-trace/t/{code}"


@pytest.mark.parametrize(
    ("lot_no", "escaped"),
    [
        ("2026/10", "2026%2F10"),
        ("A&B=C?", "A%26B%3DC%3F"),
        ("100%", "100%25"),
        ("a+b,c;d", "a%2Bb%2Cc%3Bd"),
        ('x"y', "x%22y"),
    ],
)
def test_lot_numbers_are_percent_encoded_and_round_trip(lot_no: str, escaped: str) -> None:
    uri = build_uri("https://trace.example/dl", gtin=GTIN, lot_no=lot_no)
    assert uri == f"https://trace.example/dl/01/{GTIN}/10/{escaped}"
    assert parse_uri(uri) == (GTIN, lot_no)


@given(
    lot_no=st.text(alphabet=SET_82, min_size=1, max_size=20),
    prefix=st.sampled_from(["", "/dl", "/a/b"]),
)
def test_digital_link_round_trip(lot_no: str, prefix: str) -> None:
    uri = build_uri(f"https://trace.example{prefix}", gtin=GTIN, lot_no=lot_no)
    assert parse_uri(uri) == (GTIN, lot_no)
    assert parse_uri(uri + "?linkType=linkset") == (GTIN, lot_no)


@given(st.sampled_from(SAMPLES))
def test_code_uri_round_trip(code: str) -> None:
    uri = build_uri("https://trace.example/x", code=code)
    assert parse_uri(uri) == code
    assert parse_uri(f"https://trace.example/t/{format_code(code).lower()}") == code


@pytest.mark.parametrize("lot_no", ["", "with space", "批号1", "A" * 21, "tab\t"])
def test_lot_numbers_outside_gs1_set_82_are_refused(lot_no: str) -> None:
    with pytest.raises(ValueError, match="character set 82"):
        build_uri("https://trace.example", gtin=GTIN, lot_no=lot_no)


@pytest.mark.parametrize(
    ("uri", "error", "reason"),
    [
        ("ftp://trace.example/01/06947512300010/10/A", DigitalLinkError, "http"),
        ("https://trace.example/x/y", DigitalLinkError, "primary identifier"),
        ("https://trace.example/01/06947512300010/10", DigitalLinkError, "even number"),
        ("https://trace.example/t/ABCD", TraceCodeError, "11 characters"),
        ("https://trace.example/00/106141412345678908", DigitalLinkError, "no GTIN"),
    ],
)
def test_parse_errors_have_reasons(uri: str, error: type[Exception], reason: str) -> None:
    with pytest.raises(error, match=reason):
        parse_uri(uri)


def test_a_product_uri_names_no_lot() -> None:
    assert parse_uri(f"https://id.gs1.org/01/{GTIN}") == (GTIN, None)
    assert parse_uri(f"https://trace.example/01/{GTIN[1:]}/10/A1") == (GTIN, "A1")  # GTIN-13 in the path


# ---------------------------------------------------------------- QR codes


def test_qr_images_encode_the_uri() -> None:
    uri = f"https://trace.example/01/{GTIN}/10/2026-M01-A"
    qr = segno.make(uri, error="m", micro=False, boost_error=False)
    size = qr.symbol_size(scale=1, border=4)[0]
    svg = codes.qr_svg(uri)
    assert svg.startswith(b"<?xml") and b"<svg" in svg
    png = codes.qr_png(uri, scale=3)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width = int.from_bytes(png[16:20], "big")
    assert width == size * 3
    assert len(codes.qr_png(uri, scale=6)) > len(png)
    terminal = codes.qr_terminal(uri)
    lines = terminal.splitlines()
    assert len(lines) == (size + 1) // 2  # two modules per character row
    assert all(len(line) == size for line in lines)
    assert codes.qr_terminal(uri + "x") != terminal
