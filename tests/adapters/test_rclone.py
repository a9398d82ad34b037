"""Offsite copies through rclone, against real SFTP, FTP and S3 servers on loopback."""

import hashlib
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from harness.remotes import RemoteServer

from virtbackup.adapters import rclone, runner
from virtbackup.adapters.rclone import Remote, RemoteEntry
from virtbackup.core.backup_errors import RemoteError
from virtbackup.core.errors import MissingComponent

# A hung rclone must not hold CI for the suite-wide 900 s; the bound includes starting
# the session's servers (moto alone can take a minute on a loaded 2-core host).
pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024


def random_bytes(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def download(remote: Remote, path: str) -> bytes:
    with rclone.download_stream(remote, path) as pipe:
        return pipe.read()


def files_of(entries: list[RemoteEntry]) -> dict[str, int]:
    return {entry.path: entry.size for entry in entries if not entry.is_dir}


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    """A small backup as the store leaves it, with a stale partial file to exclude."""
    root = tmp_path / "vm1" / "2025-01-01T000000"
    (root / "disks").mkdir(parents=True)
    (root / "manifest.json").write_text('{"version": 1}\n')
    (root / "disks" / "vda.lz4").write_bytes(random_bytes(300_000))
    (root / "disks" / "vdb.lz4").write_bytes(b"")
    (root / "disks" / "vdc.lz4.partial").write_bytes(b"half")
    return root


# -- locations and preconditions (no server) -------------------------------------------


@pytest.mark.parametrize(
    ("location", "parts", "expected"),
    [
        ("offsite:", ("a", "b"), "offsite:a/b"),
        ("offsite:virtbackup", ("vm1/", "/disk"), "offsite:virtbackup/vm1/disk"),
        ("offsite:virtbackup/", ("vm1//x",), "offsite:virtbackup/vm1/x"),
        ("offsite:/srv/backups", ("vm1",), "offsite:/srv/backups/vm1"),
        ("offsite:virtbackup", ("", "/"), "offsite:virtbackup"),
    ],
)
def test_paths_join_without_doubled_slashes(
    location: str, parts: tuple[str, ...], expected: str
) -> None:
    assert Remote(location).path(*parts) == expected


@pytest.mark.parametrize("location", ["/var/backups", ":sftp,host=h:path", "relative/dir"])
def test_a_location_without_a_remote_name_is_refused(location: str) -> None:
    with pytest.raises(RemoteError, match="not of the form name:path"):
        rclone.check_remote(Remote(location))


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="rclone config file .*missing.conf does not exist"):
        rclone.check_remote(Remote("offsite:x", config=tmp_path / "missing.conf"))


def test_an_undefined_remote_is_named(tmp_path: Path) -> None:
    config = tmp_path / "rclone.conf"
    config.write_text("[other]\ntype = local\n")
    with pytest.raises(RemoteError, match=r"remote offsite: is not defined in .*rclone.conf"):
        rclone.check_remote(Remote("offsite:x", config=config))


def test_missing_rclone_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingComponent, match="rclone is not installed: apt-get install rclone"):
        rclone.check_remote(Remote("offsite:x"))


# -- against the servers ---------------------------------------------------------------


def test_check_remote_creates_the_base_path(remote: RemoteServer) -> None:
    rclone.check_remote(remote.remote)
    assert rclone.list_entries(remote.remote, "") == []
    local = remote.local_path("")
    assert local is None or local.is_dir()


def test_copy_dir_lists_what_it_copied(remote: RemoteServer, backup_dir: Path) -> None:
    rclone.copy_dir(remote.remote, backup_dir, "vm1/run", exclude=["*.partial"])
    entries = rclone.list_entries(remote.remote, "vm1/run", recursive=True)
    assert files_of(entries) == {
        "manifest.json": 15,
        "disks/vda.lz4": 300_000,
        "disks/vdb.lz4": 0,
    }
    assert RemoteEntry("disks", -1, True) in entries
    top = rclone.list_entries(remote.remote, "vm1/run")
    assert {entry.path for entry in top} == {"manifest.json", "disks"}
    assert rclone.list_entries(remote.remote, "no/such/dir") == []


def rclone_children(command: str) -> list[int]:
    """Pids of our child processes running `rclone COMMAND`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and argv[:2] == [b"rclone", command.encode()]:
            pids.append(int(proc.name))
    return pids


def sparse_random_file(path: Path, size: int) -> None:
    """Random 256 KiB extents with holes between them, like a disk image."""
    with path.open("wb") as file:
        file.truncate(size)
        for n, offset in enumerate(range(0, size, 1 * MiB)):
            file.seek(offset)
            file.write(random_bytes(256 * 1024, seed=n))


def test_copy_dir_resumes_after_rclone_is_killed(remote: RemoteServer, tmp_path: Path) -> None:
    source = tmp_path / "backup"
    source.mkdir()
    big = source / "disk.img"
    sparse_random_file(big, 6 * MiB)
    (source / "manifest.json").write_text("{}\n")
    slow = replace(remote.remote, bwlimit="1M")
    failures: list[BaseException] = []

    def upload() -> None:
        try:
            rclone.copy_dir(slow, source, "run")
        except BaseException as err:
            failures.append(err)

    uploader = threading.Thread(target=upload)
    uploader.start()
    deadline = time.monotonic() + 120  # starting a process can take seconds on a loaded host
    while not (pids := rclone_children("copy")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # about 1 MiB of the 6 is on its way
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    uploader.join(timeout=120)
    assert pids and len(failures) == 1 and isinstance(failures[0], RemoteError)
    assert "killed by signal 9" in str(failures[0])
    assert (
        files_of(rclone.list_entries(remote.remote, "run")).get("disk.img", 0) < big.stat().st_size
    )

    rclone.copy_dir(remote.remote, source, "run")
    assert download(remote.remote, "run/disk.img") == big.read_bytes()
    rclone.check_dir(remote.remote, source, "run")


@pytest.mark.parametrize("size", [0, 3 * MiB + 17])
def test_streams_round_trip(remote: RemoteServer, size: int) -> None:
    data = random_bytes(size)
    with rclone.upload_stream(remote.remote, "streams/disk.lz4") as pipe:
        for start in range(0, size, MiB):
            view = memoryview(data)[start : start + MiB]
            written = os.writev(pipe.fileno(), [view[:1000], view[1000:]])
            assert written == len(view)
    entries = rclone.list_entries(remote.remote, "streams")
    assert files_of(entries) == {"disk.lz4": size}
    assert download(remote.remote, "streams/disk.lz4") == data
    with rclone.download_stream(remote.remote, "streams/disk.lz4") as pipe:
        assert pipe.read(10) == data[:10]  # stopping early is no error


def test_a_failed_upload_stream_leaves_nothing(remote: RemoteServer) -> None:
    with pytest.raises(ValueError, match="stream broke"):
        with rclone.upload_stream(remote.remote, "streams/disk.lz4") as pipe:
            pipe.write(random_bytes(3 * MiB))
            pipe.flush()
            raise ValueError("stream broke")
    assert files_of(rclone.list_entries(remote.remote, "streams")) == {}


def test_downloading_a_missing_file_fails(remote: RemoteServer) -> None:
    rclone.write_text(remote.remote, "dir/file", "x")
    for missing in ("dir/other", "dir"):
        with pytest.raises(RemoteError, match=f"{missing} is not a file on the remote"):
            download(remote.remote, missing)


def test_text_round_trip(remote: RemoteServer) -> None:
    rclone.write_text(remote.remote, "vm1/manifest.json", '{"name": "vm1 ü"}\n')
    rclone.write_text(remote.remote, "vm1/manifest.json", '{"name": "vm1 ö"}\n')
    assert rclone.read_text(remote.remote, "vm1/manifest.json") == '{"name": "vm1 ö"}\n'


def corrupt(remote: RemoteServer, path: str, original: bytes, tmp_path: Path) -> None:
    """Change a remote file behind rclone's back: same size where a hash can tell (sftp
    on disk, s3 by overwriting), shorter on ftp, which has no hash."""
    local = remote.local_path(path)
    if remote.kind == "ftp" and local is not None:
        local.write_bytes(original[:-1])
    elif local is not None:
        local.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])
    else:
        other = tmp_path / "other"
        other.write_bytes(random_bytes(len(original), seed=99))
        rclone.copy_file(remote.remote, other, path)


def test_check_dir_names_a_corrupted_file(
    remote: RemoteServer, backup_dir: Path, tmp_path: Path
) -> None:
    rclone.copy_dir(remote.remote, backup_dir, "run", exclude=["*.partial"])
    rclone.check_dir(remote.remote, backup_dir, "run", exclude=["*.partial"])
    with pytest.raises(RemoteError, match=r"vdc.lz4.partial \(missing\)"):
        rclone.check_dir(remote.remote, backup_dir, "run")

    corrupt(remote, "run/disks/vda.lz4", (backup_dir / "disks/vda.lz4").read_bytes(), tmp_path)
    with pytest.raises(RemoteError) as caught:
        rclone.check_dir(remote.remote, backup_dir, "run", exclude=["*.partial"])
    assert str(caught.value).endswith(f"does not match {backup_dir}: disks/vda.lz4 (differs)")


EXPECTED_HASHES = {"sftp": ["md5", "sha1"], "ftp": [], "s3": ["md5"]}


def test_hashes_agree_with_hashlib(remote: RemoteServer, tmp_path: Path) -> None:
    data = random_bytes(200_000)
    (tmp_path / "f").write_bytes(data)
    rclone.copy_file(remote.remote, tmp_path / "f", "h/f")
    offered = rclone.hash_types(remote.remote)
    assert offered == EXPECTED_HASHES[remote.kind]
    for name in ("md5", "sha1"):
        expected = hashlib.new(name, data).hexdigest() if name in offered else None
        assert rclone.hashsum(remote.remote, name, "h/f") == expected


def test_purge_and_delete_file(remote: RemoteServer, backup_dir: Path) -> None:
    rclone.copy_dir(remote.remote, backup_dir, "a/run")
    rclone.write_text(remote.remote, "a/keep", "k")
    rclone.delete_file(remote.remote, "a/run/manifest.json")
    rclone.delete_file(remote.remote, "a/run/manifest.json")
    rclone.delete_file(remote.remote, "nowhere/file")
    assert "manifest.json" not in files_of(rclone.list_entries(remote.remote, "a/run"))
    rclone.purge(remote.remote, "a/run")
    rclone.purge(remote.remote, "a/run")
    assert files_of(rclone.list_entries(remote.remote, "a", recursive=True)) == {"keep": 1}


def test_an_unreachable_remote_fails_in_one_line(remote: RemoteServer, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    hasty = replace(remote.remote, retries=1)
    remote.stop()
    for call in (
        lambda: rclone.check_remote(hasty),
        lambda: rclone.list_entries(hasty, ""),
        lambda: rclone.copy_file(hasty, tmp_path / "f", "f"),
    ):
        started = time.monotonic()
        with pytest.raises(RemoteError) as caught:
            call()
        assert time.monotonic() - started < 30
        message = str(caught.value)
        assert "\n" not in message and message.startswith("rclone ")
        assert "127.0.0.1" in message or "connection refused" in message.lower()


@pytest.fixture
def rclone_argvs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """Every argument list the adapter hands to the runner."""
    seen: list[list[str]] = []
    real_run, real_spawn = runner.run, runner.spawn

    def run(argv: list[str], **kwargs: Any) -> Any:
        seen.append(list(argv))
        return real_run(argv, **kwargs)

    def spawn(argv: list[str], **kwargs: Any) -> Any:
        seen.append(list(argv))
        return real_spawn(argv, **kwargs)

    monkeypatch.setattr(runner, "run", run)
    monkeypatch.setattr(runner, "spawn", spawn)
    yield seen


def test_secrets_stay_out_of_argv_and_logs(
    remote: RemoteServer,
    backup_dir: Path,
    rclone_argvs: list[list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    limited = replace(remote.remote, bwlimit="50M", retries=2)
    with caplog.at_level(logging.DEBUG):
        rclone.check_remote(limited)
        rclone.copy_dir(limited, backup_dir, "run")
        rclone.check_dir(limited, backup_dir, "run")
        with rclone.upload_stream(limited, "s") as pipe:
            pipe.write(b"stream")
        assert download(limited, "s") == b"stream"
        rclone.purge(limited, "run")
    assert rclone_argvs and all(argv[0] == "rclone" for argv in rclone_argvs)
    transfers = [argv for argv in rclone_argvs if argv[1] in ("copy", "rcat", "cat")]
    assert len(transfers) == 3 and all("--bwlimit" in argv for argv in transfers)
    assert all("--retries=2" in argv for argv in rclone_argvs)
    seen = "\n".join(" ".join(argv) for argv in rclone_argvs) + caplog.text
    assert "rclone copy" in caplog.text
    for secret in remote.secrets:
        assert secret not in seen
