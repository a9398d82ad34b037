"""Reading a directory others may have written to: links are not followed, only regular
files are read and never beyond the bound, a directory flock'ed by a live process is held."""

import fcntl
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from virtbackup.adapters.no_follow import (
    is_held,
    is_real_dir,
    open_dir,
    read_regular_file,
    unlink_at,
)
from virtbackup.core.backup_errors import CorruptBackup


def test_a_regular_file_is_read_up_to_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_bytes(b"x" * 100)
    assert read_regular_file(path, 100) == b"x" * 100
    with pytest.raises(CorruptBackup, match="too large to be ours \\(100 bytes\\)"):
        read_regular_file(path, 99)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda path, other: os.symlink(other, path), "a symbolic link"),
        (lambda path, other: os.mkfifo(path), "a FIFO"),
        (lambda path, other: os.mkdir(path), "a directory"),
    ],
    ids=["link", "fifo", "directory"],
)
def test_what_is_not_a_regular_file_is_refused_without_opening_it(
    tmp_path: Path, make: Callable[[Path, Path], object], kind: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host file")
    path = tmp_path / "manifest.json"
    make(path, secret)
    # a FIFO opened for reading would block this test for ever
    with pytest.raises(CorruptBackup, match=f"{path} is {kind}, not a regular file"):
        read_regular_file(path, 1024)


def test_a_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CorruptBackup, match="/dev/zero is a device, not a regular file"):
        read_regular_file(Path("/dev/zero"), 1024)


def test_a_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "gone", 1024)


def test_a_link_to_a_directory_is_not_a_real_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert is_real_dir(tmp_path / "real")
    assert not is_real_dir(tmp_path / "link")
    assert not is_real_dir(tmp_path / "missing")
    fd = open_dir(tmp_path)
    try:
        assert is_real_dir("real", fd) and not is_real_dir("link", fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        open_dir(tmp_path / "link")


def test_a_directory_locked_by_another_process_is_held(tmp_path: Path) -> None:
    run = tmp_path / "partial"
    run.mkdir()
    assert not is_held(run)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
            str(run),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert is_held(run)
    finally:
        holder.kill()
        holder.wait()
    assert not is_held(run)  # the kernel dropped the lock with the process


def test_what_cannot_be_opened_counts_as_held(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert is_held(tmp_path / "link")  # left alone, never removed through the link
    assert is_held(tmp_path / "missing")


def test_our_own_lock_does_not_count_twice(tmp_path: Path) -> None:
    """flock belongs to the open file: a second descriptor of ours is refused too."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert is_held(tmp_path)
    finally:
        os.close(fd)


def test_unlink_at_removes_an_entry_and_ignores_a_missing_one(tmp_path: Path) -> None:
    (tmp_path / "left").write_text("")
    fd = open_dir(tmp_path)
    try:
        unlink_at("left", fd)
        unlink_at("left", fd)
    finally:
        os.close(fd)
    assert not (tmp_path / "left").exists()
