"""The page-cache and allocator helpers of the data path."""

import fcntl
import os
from pathlib import Path

import pytest
from harness.real import unavailable

from virtbackup.engine.datapath import io_control
from virtbackup.engine.datapath.io_control import WriteBehind, reuse_freed_memory, set_direct


def test_write_behind_kicks_every_step_and_rereleases_the_lag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(io_control, "drop_cached", lambda fd, at, n: calls.append((at, n)))
    behind = WriteBehind(fd=5, every=10, lag=20)
    for end in (4, 9, 10, 15, 25, 31, 60):
        behind.written(end)
    # each call covers what is new plus the lag behind the previous call
    assert calls == [(0, 10), (0, 25), (5, 55)]


def test_write_behind_leaves_written_data_intact(tmp_path: Path) -> None:
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        behind = WriteBehind(fd, every=1 << 20, lag=1 << 20)
        block = os.urandom(1 << 19)
        for number in range(8):
            os.write(fd, block)
            behind.written((number + 1) * len(block))
    finally:
        os.close(fd)
    assert path.read_bytes() == block * 8


def test_reuse_freed_memory_is_idempotent() -> None:
    first = reuse_freed_memory()
    assert reuse_freed_memory() is first


def test_set_direct_switches_o_direct(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if not set_direct(fd, True):
            unavailable("direct I/O", "the file system of the test directory refuses O_DIRECT")
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
        assert set_direct(fd, False)
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        os.close(fd)


def test_set_direct_says_no_where_it_cannot() -> None:
    fd = os.open("/proc/self/stat", os.O_RDONLY)  # procfs has no direct I/O
    try:
        assert not set_direct(fd, True)
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        os.close(fd)
