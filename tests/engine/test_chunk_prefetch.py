"""The read-ahead of a repository disk's chunk files (engine/datapath/chunk_prefetch.py):
bounded, in index order, zero chunks never touched, and quiet about chunks it cannot
open (the reader reports those)."""

import os
import threading
import time
from pathlib import Path

from virtbackup.core.streamformat import FrameEntry
from virtbackup.engine.datapath.chunk_prefetch import ChunkPrefetch, chunks_ahead, will_need


def _entries(count: int, zero_every: int) -> list[FrameEntry]:
    return [
        FrameEntry(0, 0, n << 16, 1 << 16, n % zero_every == 0, n.to_bytes(32, "big"))
        for n in range(count)
    ]


class _Hinted:
    """Records which chunk names were hinted (the paths themselves do not exist)."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.names: list[str] = []
        self._lock = threading.Lock()

    def path_of(self, name: str) -> Path:
        with self._lock:
            self.names.append(name)
        return self.root / name

    def settled(self, count: int) -> list[str]:
        """The names hinted once `count` were, after a pause to show no more follow."""
        deadline = time.monotonic() + 5
        while len(self.names) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        with self._lock:
            return list(self.names)


def test_hints_run_ahead_by_at_most_the_bound_and_skip_zero_chunks(tmp_path: Path) -> None:
    entries = _entries(40, zero_every=3)
    data = [e.digest.hex() for e in entries if not e.is_zero]
    hinted = _Hinted(tmp_path)
    with ChunkPrefetch(entries, hinted.path_of, ahead=4) as prefetch:
        assert hinted.settled(4) == data[:4]
        for _ in range(3):
            prefetch.taken()
        assert hinted.settled(7) == data[:7]
        for _ in range(len(data)):
            prefetch.taken()
        assert hinted.settled(len(data)) == data  # each once, in order, no zero chunk


def test_leaving_early_stops_the_hints(tmp_path: Path) -> None:
    hinted = _Hinted(tmp_path)
    with ChunkPrefetch(_entries(1000, zero_every=1000), hinted.path_of, ahead=2):
        hinted.settled(2)
    after = len(hinted.names)
    time.sleep(0.1)
    assert after == 2 and len(hinted.names) == after


def test_will_need_is_quiet_about_what_it_cannot_read(tmp_path: Path) -> None:
    chunk = tmp_path / "chunk"
    chunk.write_bytes(b"x" * 8192)
    will_need(chunk)  # a real file: hinted
    will_need(tmp_path / "missing")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    will_need(fifo)  # never blocks waiting for a writer
    link = tmp_path / "link"
    link.symlink_to(chunk)
    will_need(link)  # never followed


def test_the_bound_is_in_bytes_and_never_below_a_few_chunks() -> None:
    assert chunks_ahead(4 << 20) == 16
    assert chunks_ahead(64 << 10) == 1024
    assert chunks_ahead(64 << 20) == 8
