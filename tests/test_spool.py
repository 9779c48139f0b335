"""The durable line-protocol spool: FIFO order, counters, durability, size limit, threads."""

from __future__ import annotations

import threading
from pathlib import Path

from ingest.spool import Spool


def drain(spool: Spool) -> list[tuple[int, bytes]]:
    out = []
    while (batch := spool.peek()) is not None:
        batch_id, readings, body = batch
        out.append((readings, body))
        spool.remove(batch_id)
    return out


def test_empty_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=1000)
    assert spool.peek() is None
    assert (len(spool), spool.batches, spool.readings, spool.size_bytes, spool.full) == (0, 0, 0, 0, False)
    spool.remove(12345)  # removing an unknown batch changes nothing
    assert (len(spool), spool.readings, spool.size_bytes) == (0, 0, 0)
    spool.close()


def test_push_peek_remove_is_fifo(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=10_000)
    bodies = [f"m,tag=x v={i} {i}".encode() for i in range(5)]
    for i, body in enumerate(bodies):
        spool.push(body, i + 1)
    first = spool.peek()
    assert first is not None
    assert first[1:] == (1, bodies[0])
    assert spool.peek() == first  # peek does not remove
    assert len(spool) == 5
    assert drain(spool) == [(i + 1, b) for i, b in enumerate(bodies)]
    assert spool.peek() is None
    spool.close()


def test_counts_and_size(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=10_000)
    spool.push(b"a" * 100, 3)
    spool.push(b"b" * 50, 2)
    spool.push("温度 v=1".encode(), 1)  # size is in bytes, not characters
    assert (len(spool), spool.batches, spool.readings, spool.size_bytes) == (3, 3, 6, 150 + len("温度 v=1".encode()))
    batch = spool.peek()
    assert batch is not None
    spool.remove(batch[0])
    assert (spool.batches, spool.readings, spool.size_bytes) == (2, 3, 50 + len("温度 v=1".encode()))
    spool.remove(batch[0])  # removing twice is harmless
    assert (spool.batches, spool.readings, spool.size_bytes) == (2, 3, 50 + len("温度 v=1".encode()))
    spool.close()


def test_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "spool.db"  # the parent folder is created
    spool = Spool(path, max_bytes=10_000)
    for i in range(4):
        spool.push(f"line {i}".encode(), i + 10)
    batch = spool.peek()
    assert batch is not None
    spool.remove(batch[0])
    spool.close()

    reopened = Spool(path, max_bytes=10_000)
    assert (reopened.batches, reopened.readings, reopened.size_bytes) == (3, 11 + 12 + 13, 3 * len(b"line 1"))
    reopened.push(b"line 4", 14)  # new batches go after the old ones
    assert drain(reopened) == [(11, b"line 1"), (12, b"line 2"), (13, b"line 3"), (14, b"line 4")]
    reopened.close()

    again = Spool(path, max_bytes=10_000)
    assert (again.batches, again.readings, again.size_bytes, again.peek()) == (0, 0, 0, None)
    again.close()


def test_durable_without_close(tmp_path: Path) -> None:
    """A pushed batch is committed at once: another connection sees it while the first is still open."""
    path = tmp_path / "spool.db"
    writer = Spool(path, max_bytes=10_000)
    writer.push(b"committed", 1)
    reader = Spool(path, max_bytes=10_000)
    assert reader.peek() is not None and reader.peek()[1:] == (1, b"committed")  # type: ignore[index]
    reader.close()
    writer.close()


def test_full_when_over_max_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=100)
    spool.push(b"x" * 60, 1)
    assert not spool.full
    spool.push(b"x" * 39, 1)
    assert spool.size_bytes == 99 and not spool.full
    spool.push(b"x" * 10, 1)
    assert spool.size_bytes == 109 and spool.full
    batch = spool.peek()
    assert batch is not None
    spool.remove(batch[0])
    assert spool.size_bytes == 49 and not spool.full
    spool.close()
    # the size is recomputed on reopen, so a full spool is still full after a restart
    small = Spool(tmp_path / "spool.db", max_bytes=40)
    assert small.size_bytes == 49 and small.full
    small.close()


def test_concurrent_pushes_keep_every_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=10**9)
    threads_n, per_thread = 8, 50
    start = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                spool.push(f"t{t} i{i}".encode(), t + 1)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    expected = {f"t{t} i{i}".encode() for t in range(threads_n) for i in range(per_thread)}
    assert spool.batches == threads_n * per_thread
    assert spool.readings == per_thread * sum(t + 1 for t in range(threads_n))
    assert spool.size_bytes == sum(len(b) for b in expected)
    spool.close()

    reopened = Spool(tmp_path / "spool.db", max_bytes=10**9)
    got = drain(reopened)
    assert {b for _, b in got} == expected and len(got) == len(expected)
    for t in range(threads_n):  # each thread's batches come out in the order it pushed them
        mine = [b for _, b in got if b.startswith(f"t{t} ".encode())]
        assert mine == [f"t{t} i{i}".encode() for i in range(per_thread)]
    reopened.close()
