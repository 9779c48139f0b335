"""A durable first-in-first-out spool of line-protocol batches for when InfluxDB is away.

Each batch is one row of a SQLite file in WAL mode with `synchronous=FULL`, so a batch
that `push` returned for survives a crash of the process or the machine. Batches are
replayed oldest first and deleted only after InfluxDB accepted them. Each replica has its
own spool file; a spool over its size limit reports `full`, and the ingest service then
stops acknowledging messages (backpressure on the broker) instead of dropping anything.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class Spool:
    def __init__(self, path: Path, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batch (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "readings INTEGER NOT NULL, body BLOB NOT NULL)"
        )
        self._batches, self._readings, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(readings), 0), COALESCE(SUM(LENGTH(body)), 0) FROM batch"
        ).fetchone()

    @property
    def batches(self) -> int:
        return self._batches

    @property
    def readings(self) -> int:
        return self._readings

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def full(self) -> bool:
        return self._bytes >= self.max_bytes

    def __len__(self) -> int:
        return self._batches

    def push(self, body: bytes, readings: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO batch (readings, body) VALUES (?, ?)", (readings, body))
            self._batches += 1
            self._readings += readings
            self._bytes += len(body)

    def peek(self) -> tuple[int, int, bytes] | None:
        """The oldest batch as (id, readings, body), or None when the spool is empty."""
        with self._lock:
            row = self._db.execute("SELECT id, readings, body FROM batch ORDER BY id LIMIT 1").fetchone()
        return (row[0], row[1], bytes(row[2])) if row else None

    def remove(self, batch_id: int) -> None:
        with self._lock:
            row = self._db.execute(
                "DELETE FROM batch WHERE id = ? RETURNING readings, LENGTH(body)", (batch_id,)
            ).fetchone()
            if row:
                self._batches -= 1
                self._readings -= row[0]
                self._bytes -= row[1]

    def close(self) -> None:
        with self._lock:
            self._db.close()
