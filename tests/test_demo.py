"""The user-facing main job run end to end: a short `village demo` prints what arrived, the ledger, the
indicators, the API and the province comparison. (Its own file: parallel runs schedule files, and this
is the longest test.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(480)  # ~130 s alone; `make test` runs it beside two other test processes on 2 cores
def test_demo_prints_what_arrived(tmp_path: Path) -> None:
    env = {**os.environ, "VILLAGE_DATA_DIR": str(tmp_path / "var"), "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--duration", "8", "--speed", "1800"],
        capture_output=True,
        text=True,
        timeout=450,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "readings stored in InfluxDB, per device kind and village" in " ".join(text.split())
    total = int(re.search(r"total ([\d,]+)", text).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert total > 100
    for kind in ("paddy", "soil", "weather", "collar", "barn"):
        assert f" {kind} " in text
    assert "where the services listen" in text and "mqtt://127.0.0.1:" in text
    assert "unknown devices refused by the broker" in text
    assert (tmp_path / "var" / "demo" / "secrets" / "devices.json").stat().st_mode & 0o077 == 0
    # the ledger: every record anchored on the local chain, the demo bag verified, its trace URI printed
    flat = " ".join(text.split())
    assert "traceability ledger" in flat
    assert re.search(r"demo bag M35C-W3XR-D6R: verified \(\d+ records verified, 0 pending, 0 tampered\)", flat), flat
    assert "/01/06947512300010/10/2026-M01-A" in flat
    assert re.search(r"backfill: \d+ devices sent [\d,]+ buffered readings", flat)
    # analytics and the API: the quarter's indicators, a running API with a demo login and the trace URL
    assert "indicators computed from the demo" in flat
    assert re.search(r"dashboard http://127\.0\.0\.1:\d+/dashboard \(demo login: county / \S+;", flat), flat
    # one login per role, named after Panshan's real township (沙岭镇) and village (北郑家村)
    assert "also shaling, beizhengjia, analyst" in flat and "taiping" not in flat.lower()
    assert re.search(r"trace page http://127\.0\.0\.1:\d+/01/06947512300010/10/2026-M01-A", flat)
    # the province: two more counties (illustrative) and the comparison's URL with an officer's login
    assert re.search(r"province: Dawa 211104 and Heishan 210726 loaded \(synthetic, illustrative\), [\d,]+ read", flat)
    assert re.search(r"province http://127\.0\.0\.1:\d+/province\?period=2026-Q3 \(province login: liaoning / ", flat)
