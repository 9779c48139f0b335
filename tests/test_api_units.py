"""Small parts of the API on their own: language choice, the strings of both languages, the token bucket,
which lookups the micro-cache keeps, the inline charts, tokens, and the wrk output the benchmark reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from api.charts import hbars, range_bar, sparkline
from api.i18n import STRINGS_DIR, from_accept_language
from api.microcache import cache_key
from api.ratelimit import RateLimiter
from api.security import TokenError, api_key_prefix, create_token, decode_token, jwt_secret, new_api_key
from bench.api import parse_wrk


def _keys(d: dict, prefix: str = "") -> set[str]:  # type: ignore[type-arg]
    out = set()
    for k, v in d.items():
        out.add(prefix + str(k))
        if isinstance(v, dict):
            out |= _keys(v, f"{prefix}{k}.")
    return out


def test_both_languages_have_the_same_strings() -> None:
    zh = yaml.safe_load((STRINGS_DIR / "zh.yaml").read_text("utf-8"))
    en = yaml.safe_load((STRINGS_DIR / "en.yaml").read_text("utf-8"))
    assert _keys(zh) == _keys(en)
    assert set(zh["status"]) == {"verified", "pending", "tampered", "unverifiable", "checking"}
    assert set(zh["anchor_state"]) == {"pending", "included", "confirmed", "final", "re-queued"}


@pytest.mark.parametrize(
    "header,expected",
    [
        ("", None),
        ("en-US,en;q=0.9", "en"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("fr-FR,en;q=0.5,zh;q=0.7", "zh"),
        ("de-DE", None),
        ("en;q=0, zh-TW", "zh"),
        ("EN", "en"),
        ("zh;q=abc, en", "en"),
    ],
)
def test_accept_language(header: str, expected: str | None) -> None:
    assert from_accept_language(header) == expected


def test_token_bucket() -> None:
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        return None

    limiter = RateLimiter(app, per_minute=60)  # one a second, bursts of 60
    assert all(limiter.take("a", now=0.0) == 0 for _ in range(60))
    wait = limiter.take("a", now=0.0)
    assert wait == pytest.approx(1.0)
    assert limiter.take("b", now=0.0) == 0  # per address
    assert limiter.take("a", now=1.01) == 0  # one token back after a second
    assert limiter.take("a", now=1.02) > 0
    limiter.take("c", now=200.0)  # sweeps the idle buckets
    assert "a" not in limiter.buckets and "c" in limiter.buckets


def _scope(
    path: str, query: bytes = b"", accept: str = "", lang: str = "", method: str = "GET", encoding: str = ""
) -> dict:  # type: ignore[type-arg]
    headers = [
        (b"accept", accept.encode()),
        (b"accept-language", lang.encode()),
        (b"accept-encoding", encoding.encode()),
    ]
    return {"type": "http", "method": method, "path": path, "query_string": query, "headers": headers}


def test_micro_cache_keys() -> None:
    assert cache_key(_scope("/api/v1/trace/M35CW3XRD6R")) == ("json", "/api/v1/trace/M35CW3XRD6R", "identity")
    assert cache_key(_scope("/api/v1/trace/M35CW3XRD6R/verify")) is None
    assert cache_key(_scope("/t/M35CW3XRD6R", lang="en-GB")) == ("page", "/t/M35CW3XRD6R", "en", "identity")
    assert cache_key(_scope("/t/M35CW3XRD6R")) == ("page", "/t/M35CW3XRD6R", "zh", "identity")
    assert cache_key(_scope("/01/06947512300010/10/2026-M01-A")) == (
        "page",
        "/01/06947512300010/10/2026-M01-A",
        "zh",
        "identity",
    )
    assert cache_key(_scope("/01/06947512300010/10/2026-M01-A", accept="application/linkset+json")) is None
    assert cache_key(_scope("/01/06947512300010/10/2026-M01-A", accept="application/json")) is None  # the linkset
    assert cache_key(_scope("/01/06947512300010/10/2026-M01-A", accept="*/*")) is not None  # the page
    assert cache_key(_scope("/t/M35CW3XRD6R", query=b"lang=en")) is None
    # compressed and plain answers are kept apart (a replay compresses nothing)
    assert cache_key(_scope("/t/M35CW3XRD6R", encoding="gzip, deflate, br")) == ("page", "/t/M35CW3XRD6R", "zh", "gzip")
    assert cache_key(_scope("/api/v1/trace/M35CW3XRD6R", encoding="gzip"))[-1] == "gzip"  # type: ignore[index]
    assert cache_key(_scope("/t/M35CW3XRD6R", method="POST")) is None
    assert cache_key(_scope("/api/v1/admin/farms")) is None


def test_charts() -> None:
    line = sparkline([1.0, None, 3.0, 2.0], threshold=2.5, label="water")
    assert line.startswith("<svg") and "<title>water: 1–3</title>" in line and 'class="thr"' in line
    assert sparkline([1.0]) == "" and sparkline([]) == ""
    bar = range_bar(-3.0, 1.5, 6.0, scale=(-15, 20), threshold=-5, label="level", unit="cm")
    assert "level: -3–6 cm" in bar and 'class="mean"' in bar
    assert range_bar(None, None, None, scale=(0, 1)) == ""
    bars = hbars([("北郑家村", 100.0), ("兴隆村", 0.0), ("x", None)], unit="%")
    assert bars.count('class="bar"') == 2 and "北郑家村" in bars
    assert "<script" not in hbars([("<script>", 1.0)])  # labels are escaped


def test_tokens_and_keys() -> None:
    t = create_token("s" * 32, "county", "county_admin", "211122", 60)
    claims = decode_token("s" * 32, t)
    assert claims["sub"] == "county" and claims["role"] == "county_admin" and claims["scope_code"] == "211122"
    with pytest.raises(TokenError, match="expired"):
        decode_token("s" * 32, create_token("s" * 32, "county", "county_admin", "211122", -1))
    with pytest.raises(TokenError):
        decode_token("t" * 32, t)
    key, prefix, digest = new_api_key()
    assert api_key_prefix(key) == prefix and len(digest) == 64 and key not in digest
    assert api_key_prefix("vk_") is None and api_key_prefix("Bearer x") is None


WRK = """Running 5s test @ http://127.0.0.1:40000/api/v1/trace/M35CW3XRD6R
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.12ms    2.01ms  41.00ms   90.00%
    Req/Sec     6.30k   400.00     7.00k    70.00%
  Latency Distribution
     50%  850.00us
     75%    5.00ms
     90%    7.00ms
     99%    1.20s
  31666 requests in 5.01s, 512.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   6299.70
Transfer/sec:    102.20MB
"""


def test_parse_wrk() -> None:
    r = parse_wrk(WRK)
    assert r == {
        "requests_per_s": 6299.7,
        "latency_ms_p50": 0.85,
        "latency_ms_p99": 1200.0,
        "requests": 31666,
        "errors": 3,
        "non_2xx": 4,
    }
    with pytest.raises(ValueError, match="unexpected wrk output"):
        parse_wrk("nothing useful")


def test_token_secret_from_setting_file_or_generated(tmp_path: Path) -> None:
    from core.settings import Settings

    setting, filed_secret = "from-the-setting-" + "s" * 32, "from-a-file-" + "f" * 32
    given = Settings(_env_file=None, VILLAGE_DATA_DIR=str(tmp_path), API_JWT_SECRET=setting)  # type: ignore[call-arg]
    assert jwt_secret(given) == setting
    (tmp_path / "secret").write_text(filed_secret + "\n")
    filed = Settings(_env_file=None, VILLAGE_DATA_DIR=str(tmp_path), API_JWT_SECRET_FILE=str(tmp_path / "secret"))  # type: ignore[call-arg]
    assert jwt_secret(filed) == filed_secret
    generated = Settings(_env_file=None, VILLAGE_DATA_DIR=str(tmp_path / "data"))  # type: ignore[call-arg]
    first = jwt_secret(generated)
    path = tmp_path / "data" / "secrets" / "api_jwt_secret"
    assert len(first) >= 48 and jwt_secret(generated) == first  # kept: every worker signs alike
    assert path.stat().st_mode & 0o777 == 0o600
