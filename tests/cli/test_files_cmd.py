"""`files ls|get` and `export --nbd` against real backups of a shut-off domain whose disk
holds ext4 on a partition and xfs on LVM: contents and metadata come back, a damaged
chunk fails its file (not the others), and the export serves what restore writes.

One disk, backed up once in each form (repository, stream, encrypted repository), is
shared by the module; each `files` command launches the appliance once (10-20 s here)."""

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from age_helpers import KeyPair, make_key_pair
from guest_files_helpers import VG, GuestImage, Known, build_guest_image
from harness.cli import NO_HOST_CONFIG, virtbackup_in
from harness.libvirtd import DiskSpec, DomainFactory
from repository_helpers import chunk_holding

CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Backups:
    image: GuestImage
    state: Path
    repository: Path
    stream: Path
    encrypted: Path
    keys: KeyPair


def _backup(state: Path, dest: Path, name: str, *args: str) -> Path:
    dest.mkdir()
    result = virtbackup_in(state, "backup", name, "--dest", str(dest), *args, "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert row["result"] == "ok", row
    return Path(row["backup"])


@pytest.fixture(scope="module")
def backups(
    libvirt_conn: Any, libvirt: Any, guestfs_works: None, tmp_path_factory: Any
) -> Iterator[Backups]:
    tmp = tmp_path_factory.mktemp("files")
    factory = DomainFactory(libvirt_conn, libvirt)
    try:
        image = build_guest_image(factory.workdir / "guest.raw")
        name = factory.create([DiskSpec("raw", image=image.path)], hint="files").name()
        state = tmp / "state"
        keys = make_key_pair(tmp / "keys")
        yield Backups(
            image,
            state,
            _backup(state, tmp / "repo", name, "--layout", "repository"),
            _backup(state, tmp / "streams", name, "--layout", "stream"),
            _backup(
                state,
                tmp / "enc",
                name,
                "--layout",
                "repository",
                "--encrypt",
                str(keys.recipients),
            ),
            keys,
        )
    finally:
        factory.cleanup()


def _files(backups: Backups, *args: str) -> subprocess.CompletedProcess[str]:
    return virtbackup_in(backups.state, "files", *args)


def _check_copy(copy: Path, known: Known) -> None:
    info = copy.lstat()
    assert (info.st_mode, info.st_uid, info.st_gid) == (known.mode, known.uid, known.gid), copy
    assert info.st_mtime_ns == known.mtime_ns, copy
    if known.link is not None:
        assert os.readlink(copy) == known.link
    elif known.sha256 is not None:
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == known.sha256, copy


def test_get_keeps_owner_mode_and_times_and_a_damaged_chunk_fails_only_its_file(
    backups: Backups, tmp_path: Path
) -> None:
    dest = tmp_path / "repo"
    shutil.copytree(backups.repository.parents[1], dest, symlinks=True)
    backup = dest / backups.repository.parent.name / backups.repository.name
    big = backups.image.big
    chunk = chunk_holding(dest, lambda data: len(data) == CHUNK and data in big)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    to = tmp_path / "out"
    to.mkdir()
    good = ["/vda1/home", f"/{VG}-data/srv", "/vda1/etc/hostname"]
    result = _files(backups, str(backup), "get", *good, "/vda1/big.bin", "--to", str(to))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"copied\t{p}\t{to / p.rpartition('/')[2]}" for p in good]
    line = result.stderr.strip()
    assert line.startswith("virtbackup: error: cannot read /vda1/big.bin: I/O error: vda of "), line
    assert f"(chunk {chunk.name} of backup {backup}) does not match its digest" in line, line
    assert len(result.stderr.splitlines()) == 1
    copied = 0
    for guest, known in backups.image.files.items():
        for path in good:
            if guest == path or guest.startswith(path + "/"):
                _check_copy(to / path.rpartition("/")[2] / guest[len(path) + 1 :], known)
                copied += 1
    assert copied == 10  # home, alice, notes, bin, run.sh, link; srv, www, index.html; hostname
    _check_copy(to / "hostname", backups.image.files["/vda1/etc/hostname"])
    # the link was copied as a link: nothing of the host's /etc/passwd came along
    assert (to / "home/alice/passwd-link").is_symlink()
    assert sorted(os.listdir(to)) == ["home", "hostname", "srv"]  # no big.bin, no staging


def test_ls_of_an_encrypted_backup_shows_each_filesystem_and_entries_metadata(
    backups: Backups,
) -> None:
    args = [str(backups.encrypted), "ls", "/", "/vda1/home/alice/", "--json"]
    refused = _files(backups, *args)
    assert refused.returncode == 2
    assert "is encrypted: give --identity FILE" in refused.stderr
    result = _files(backups, *args, "--identity", str(backups.keys.identity))
    assert result.returncode == 0, result.stderr
    listings = json.loads(result.stdout)
    assert [row["name"] for row in listings["/"]] == ["vda1", f"{VG}-data"]
    listing = {row["name"]: row for row in listings["/vda1/home/alice/"]}
    assert sorted(listing) == ["bin", "notes.txt", "passwd-link"]
    notes = listing["notes.txt"]
    assert (notes["type"], notes["mode"], notes["uid"], notes["gid"]) == ("-", "0640", 1001, 1002)
    assert notes["mtime"] == "2001-09-09T01:46:40Z"
    assert listing["passwd-link"]["link"] == "/etc/passwd"
    assert listing["bin"]["type"] == "d"


def test_get_refuses_to_write_over_what_is_there_without_starting_anything(
    backups: Backups, tmp_path: Path
) -> None:
    (tmp_path / "hostname").write_text("mine")
    result = _files(
        backups, str(backups.repository), "get", "/vda1/etc/hostname", "--to", str(tmp_path)
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"virtbackup: error: {tmp_path / 'hostname'} exists: remove it or choose another --to"
    )
    assert (tmp_path / "hostname").read_text() == "mine"


def _background(backups: Backups, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "VIRTBACKUP_STATE_DIR": str(backups.state)}
    return subprocess.Popen(
        [sys.executable, "-m", "virtbackup", *NO_HOST_CONFIG, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _nbdkit_children(pid: int) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-P", str(pid), "nbdkit"], check=False, capture_output=True, text=True
    )
    return [int(line) for line in found.stdout.split()]


def test_export_nbd_serves_what_restore_writes_and_sigterm_leaves_nothing(
    backups: Backups, tmp_path: Path
) -> None:
    socket = tmp_path / "vda.sock"
    served = _background(backups, "export", str(backups.repository), "--nbd", str(socket))
    try:
        assert served.stdout is not None
        line = served.stdout.readline()
        assert line == f"serving\tvda\tnbd+unix:///?socket={socket}\t(read-only; Ctrl-C stops)\n"
        assert stat.S_IMODE(socket.lstat().st_mode) == 0o600
        children = _nbdkit_children(served.pid)
        assert len(children) == 1
        copy = tmp_path / "copy.raw"
        uri = f"nbd+unix:///?socket={socket}"
        subprocess.run(["qemu-img", "convert", "-f", "raw", uri, str(copy)], check=True)
        restored = virtbackup_in(
            backups.state, "restore", str(backups.repository), "--to", str(tmp_path / "r")
        )
        assert restored.returncode == 0, restored.stderr
        vda = Path(dict(line.split("\t") for line in restored.stdout.splitlines())["vda"])
        assert subprocess.run(["cmp", str(copy), str(vda)], check=False).returncode == 0
        mapped = subprocess.run(
            ["qemu-img", "map", "--output=json", "-f", "raw", uri], capture_output=True, check=True
        )
        assert any(not extent["data"] for extent in json.loads(mapped.stdout))  # holes shown
        served.send_signal(signal.SIGTERM)
        out, err = served.communicate(timeout=30)
    finally:
        if served.poll() is None:
            served.kill()
    assert (served.returncode, out, err) == (0, "stopped\n", "")
    assert not os.path.lexists(socket)
    assert not any(p.name.startswith(".virtbackup-nbd-") for p in tmp_path.iterdir())
    _gone(children)


def _gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def _mounted(path: Path) -> bool:
    found = subprocess.run(["findmnt", "--mountpoint", str(path)], check=False, capture_output=True)
    return found.returncode == 0


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], check=False, capture_output=True, text=True)
    return [int(line) for line in found.stdout.split()]


@pytest.mark.parametrize("ending", ["umount", "SIGTERM"])
def test_mount_shows_the_filesystems_until_umount_or_sigterm_then_nothing_is_left(
    backups: Backups, tmp_path: Path, ending: str
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounting = _background(backups, "mount", str(backups.stream), str(mnt))
    try:
        assert mounting.stdout is not None
        line = mounting.stdout.readline()
        assert line == f"mounted\t{mnt}\t(read-only; virtbackup umount {mnt} ends it)\n"
        assert len(_nbdkit_children(mounting.pid)) == 1
        children = _children(mounting.pid)  # nbdkit, the FUSE loop, the appliance's
        assert sorted(os.listdir(mnt)) == ["vda1", f"{VG}-data"]
        assert (mnt / "vda1/etc/hostname").read_bytes() == b"files-guest\n"
        notes = (mnt / "vda1/home/alice/notes.txt").stat()
        known = backups.image.files["/vda1/home/alice/notes.txt"]
        assert (notes.st_mode, notes.st_uid, notes.st_gid) == (known.mode, known.uid, known.gid)
        with pytest.raises(OSError):
            (mnt / "vda1/etc/new").write_text("no")
        if ending == "umount":
            ended = virtbackup_in(backups.state, "umount", str(mnt))
            assert ended.returncode == 0, ended.stderr
        else:
            mounting.send_signal(signal.SIGTERM)
        out, err = mounting.communicate(timeout=60)
    finally:
        if mounting.poll() is None:
            mounting.kill()
            subprocess.run(["fusermount", "-u", "-z", str(mnt)], check=False)
    assert (mounting.returncode, out) == (0, f"unmounted\t{mnt}\n")
    # libguestfs itself reports the failed lookup of the write attempt; nothing else
    assert all("/vda1/etc/new: No such file" in line for line in err.splitlines()), err
    assert not _mounted(mnt)
    _gone(children)
    if ending == "umount":
        again = virtbackup_in(backups.state, "umount", str(mnt))
        assert again.returncode == 2
        assert again.stderr.strip() == f"virtbackup: error: no backup is mounted at {mnt}"


def test_export_nbd_refuses_an_existing_socket_path_and_an_unknown_disk(
    backups: Backups, tmp_path: Path
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("")
    result = virtbackup_in(backups.state, "export", str(backups.stream), "--nbd", str(taken))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"virtbackup: error: {taken} exists: give a socket path that does not exist yet"
    )
    assert taken.read_text() == ""
    result = virtbackup_in(
        backups.state, "export", str(backups.stream), "--nbd", str(tmp_path / "s"), "--disk", "vdz"
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"virtbackup: error: backup {backups.stream} has no disk vdz: it has vda"
    )
    missing = tmp_path / "nowhere" / "s"
    result = virtbackup_in(backups.state, "export", str(backups.stream), "--nbd", str(missing))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"virtbackup: error: {missing.parent} is not a directory: create it first"
    )
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_usage_errors_are_one_line_before_anything_starts(backups: Backups, tmp_path: Path) -> None:
    backup = str(backups.stream)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    (tmp_path / "file").write_text("")
    cases = [
        (["export", backup], "give either --to DIR or --nbd SOCKET"),
        (
            ["export", backup, "--to", str(tmp_path), "--disk", "vda"],
            "--disk goes with --nbd SOCKET",
        ),
        (
            ["export", backup, "--nbd", str(tmp_path / "s"), "--remote-location", "r:x"],
            "--nbd serves backups on this host only: export the remote backup with --to DIR first",
        ),
        (["files", backup, "get", "/vda1/etc"], "get needs PATH... and --to DIR"),
        (
            ["files", backup, "get", "/vda1/etc", "--to", str(tmp_path / "no")],
            f"{tmp_path / 'no'} is not a directory: create it first",
        ),
        (
            ["files", backup, "get", "/vda1/a/x", "/vda1/b/x", "--to", str(tmp_path)],
            f"two of the paths would both be copied to {tmp_path / 'x'}",
        ),
        (
            ["files", backup, "get", "/", "--to", str(tmp_path)],
            "/ holds the backup's filesystems: get /NAME or a path inside one",
        ),
        (
            ["files", backup, "ls", "/", "--remote-location", "r:x"],
            "files reads backups on this host only: export it with --to first",
        ),
        (
            ["mount", backup, str(tmp_path / "full")],
            f"{tmp_path / 'full'} is not empty: give an empty directory",
        ),
        (
            ["mount", backup, str(tmp_path / "file")],
            f"{tmp_path / 'file'} is not a directory: create an empty directory first",
        ),
    ]
    for args, message in cases:
        result = virtbackup_in(backups.state, *args)
        assert (result.returncode, result.stderr) == (2, f"virtbackup: error: {message}\n"), args
