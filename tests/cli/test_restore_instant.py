"""`restore --instant`: the tiny real guest started from a repository backup on overlays
backed by the backup's NBD export, its data copied in while it runs; a run killed -9
mid-copy finished by `clean`; a taken name refused."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from backup_helpers import disk_of, make_backup
from harness.cli import NO_HOST_CONFIG, virtbackup_in
from harness.guest import GuestBoot, TinyGuest, guest_xml, make_data_disk
from harness.libvirtd import DomainFactory

from virtbackup.adapters.journal import list_journals
from virtbackup.core.manifest import LAYOUT_REPOSITORY

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]
MiB = 1024 * 1024
DATA_START, DATA_END = 40 * MiB, 60 * MiB  # random data in the filesystem's free space


@pytest.fixture(scope="module")
def backup(tmp_path_factory: pytest.TempPathFactory, tiny_guest_boot: GuestBoot) -> Path:
    """A repository backup of a tiny guest's disk (ext4, 64 MiB) with its domain XML."""
    work = tmp_path_factory.mktemp("instant-backup")
    disk = make_data_disk(work / "data.raw", "raw")
    with open(disk, "r+b") as image:  # data beyond the filesystem's, to be copied in
        for offset in range(DATA_START, DATA_END, MiB):
            image.seek(offset)
            image.write(os.urandom(MiB // 2))
    xml = guest_xml("instant-source", tiny_guest_boot, disk, "raw", True, work / "console.log")
    return make_backup(work / "dest", [disk_of(disk)], layout=LAYOUT_REPOSITORY, xml=xml).path


@pytest.fixture
def new_name(libvirt_conn: Any, libvirt: Any) -> Iterator[str]:
    name = f"vbtest-instant-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        dom = libvirt_conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefine()


def _argv(backup: Path, to: Path, name: str) -> list[str]:
    return [
        "restore",
        str(backup),
        "--instant",
        "--define",
        name,
        "--keep-host-devices",
        "--to",
        str(to),
    ]


def _standalone(dom: Any, overlay: Path) -> None:
    """The domain runs on `overlay` with no backing at all."""
    xml = dom.XMLDesc(0)
    assert str(overlay) in xml
    assert "protocol='nbd'" not in xml and "nbd+unix" not in xml
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "backing-filename" not in info


def _same_as_backup(dom: Any, overlay: Path, backup: Path, state_dir: Path, tmp: Path) -> None:
    """The guest-visible bytes equal a normal restore's, read with the guest paused: all
    of the data written beyond the filesystem's, and every block but the few the running
    guest itself writes (the ext4 superblock and journal on mount)."""
    plain = virtbackup_in(state_dir, "restore", str(backup), "--to", str(tmp / "plain"))
    assert plain.returncode == 0, plain.stderr
    seen = tmp / "seen.raw"
    dom.suspend()
    try:
        convert = ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw"]
        subprocess.run([*convert, str(overlay), str(seen)], check=True)
    finally:
        dom.resume()
    expected, actual = (tmp / "plain" / "vda.raw").read_bytes(), seen.read_bytes()
    assert len(expected) == len(actual)
    assert expected[DATA_START:DATA_END] == actual[DATA_START:DATA_END]
    block = 4096
    differ = sum(
        expected[at : at + block] != actual[at : at + block] for at in range(0, len(actual), block)
    )
    assert differ <= 64, f"{differ} blocks differ"


def _nothing_left(state_dir: Path) -> None:
    """No journal, no server, no socket directory."""
    assert not list_journals(state_dir)
    assert not list(Path("/var/lib/libvirt/qemu").glob("virtbackup-instant-*"))
    servers = subprocess.run(["pgrep", "-f", "nbdkit.*virtbackup-instant"], check=False)
    assert servers.returncode == 1


def test_it_runs_at_once_and_ends_on_a_local_identical_image(
    backup: Path,
    new_name: str,
    libvirt_conn: Any,
    libvirt: Any,
    tmp_path: Path,
    domain_factory: DomainFactory,
) -> None:
    to = domain_factory.workdir / "to"  # where qemu's user reaches
    state_dir = tmp_path / "state"
    started = time.monotonic()
    result = virtbackup_in(state_dir, *_argv(backup, to, new_name), timeout=300)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"running\t{new_name} (")
    overlay = to / "vda.qcow2"
    assert lines[1:] == [f"vda\t{overlay}", lines[2]]
    assert lines[2].endswith("on local images only")
    print(f"instant restore: {lines[0]}; whole command {took:.1f} s")
    dom = libvirt_conn.lookupByName(new_name)
    guest = TinyGuest(dom, overlay, "qcow2", tmp_path / "console.log", libvirt)
    guest.wait_agent(120)
    _standalone(dom, overlay)
    _same_as_backup(dom, overlay, backup, state_dir, tmp_path)
    _nothing_left(state_dir)


def _start_and_kill(
    backup: Path, to: Path, name: str, state_dir: Path, sig: int = signal.SIGKILL
) -> tuple[int, str]:
    """The instant restore, sent `sig` as soon as the domain runs: its exit status and
    stderr."""
    env = {**os.environ, "VIRTBACKUP_STATE_DIR": str(state_dir)}
    argv = [
        sys.executable,
        "-m",
        "virtbackup",
        *NO_HOST_CONFIG,
        *_argv(backup, to, name),
    ]
    run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert run.stdout is not None
        assert run.stdout.readline().startswith(f"running\t{name}")
        os.kill(run.pid, sig)
        _, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    return run.returncode, err


@dataclass
class Killed:
    to: Path  # where its overlays are
    state_dir: Path
    dom: Any


@pytest.fixture
def killed(
    backup: Path, new_name: str, libvirt_conn: Any, tmp_path: Path, domain_factory: DomainFactory
) -> Killed:
    """An instant restore killed -9 as soon as its domain runs."""
    to = domain_factory.workdir / "to"  # where qemu's user reaches
    state_dir = tmp_path / "state"
    _start_and_kill(backup, to, new_name, state_dir)
    return Killed(to, state_dir, libvirt_conn.lookupByName(new_name))


def test_kill_9_mid_copy_then_clean_finishes_it(
    backup: Path, killed: Killed, tmp_path: Path, libvirt: Any
) -> None:
    to, state_dir, dom = killed.to, killed.state_dir, killed.dom
    overlay = to / "vda.qcow2"
    assert "protocol='nbd'" in dom.XMLDesc(0)  # killed before the copy was done
    cleaned = virtbackup_in(state_dir, "clean", timeout=300)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert dom.isActive()
    TinyGuest(dom, overlay, "qcow2", tmp_path / "console.log", libvirt).wait_agent(60)
    _standalone(dom, overlay)
    _nothing_left(state_dir)
    _same_as_backup(dom, overlay, backup, state_dir, tmp_path)


def test_sigterm_mid_copy_finishes_the_copy_first(
    backup: Path, new_name: str, libvirt_conn: Any, tmp_path: Path, domain_factory: DomainFactory
) -> None:
    to, state_dir = domain_factory.workdir / "to", tmp_path / "state"
    code, err = _start_and_kill(backup, to, new_name, state_dir, signal.SIGTERM)
    assert (code, err.splitlines()[-1:]) == (130, ["virtbackup: error: interrupted by SIGTERM"]), (
        err
    )
    _standalone(libvirt_conn.lookupByName(new_name), to / "vda.qcow2")
    _nothing_left(state_dir)


def test_a_taken_name_is_refused_in_one_line(
    backup: Path, new_name: str, libvirt_conn: Any, tmp_path: Path, tiny_guest_boot: GuestBoot
) -> None:
    disk = tmp_path / "other.raw"
    disk.touch()
    libvirt_conn.defineXML(
        guest_xml(new_name, tiny_guest_boot, disk, "raw", False, tmp_path / "c.log")
    )
    result = virtbackup_in(tmp_path / "state", *_argv(backup, tmp_path / "to", new_name))
    assert result.returncode == 2
    assert result.stderr == (
        f"virtbackup: error: a domain named {new_name} already exists: "
        "choose another --define NAME\n"
    )
    assert not (tmp_path / "to").exists()
    assert not list(Path("/var/lib/libvirt/qemu").glob("virtbackup-instant-*"))


def test_with_the_backup_gone_clean_says_how_to_recover(backup: Path, killed: Killed) -> None:
    to, state_dir, dom = killed.to, killed.state_dir, killed.dom
    moved = backup.with_name("moved-away")
    backup.rename(moved)
    try:
        cleaned = virtbackup_in(state_dir, "clean", timeout=300)
    finally:
        moved.rename(backup)
    assert cleaned.returncode == 1
    assert (
        f"the backup {backup} that {to / 'vda.qcow2'} reads from is gone: put it back and "
        "run 'virtbackup clean'; until then vda reads errors where it was not copied"
    ) in cleaned.stderr
    assert "protocol='nbd'" in dom.XMLDesc(0)
    again = virtbackup_in(state_dir, "clean", timeout=300)
    assert again.returncode == 0, again.stderr
    _standalone(dom, to / "vda.qcow2")
    _nothing_left(state_dir)


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ([], "--instant needs --define NAME"),
        (["--define", "x", "--force"], "--instant restores a backup on this host, without --force"),
        (
            ["--define", "x", "--to-source"],
            "--instant runs the domain on new local images: not with --to-source",
        ),
    ],
)
def test_instant_options_that_do_not_go_together(
    backup: Path, tmp_path: Path, extra: list[str], error: str
) -> None:
    argv = ["restore", str(backup), "--instant", "--to", str(tmp_path / "to"), *extra]
    result = virtbackup_in(tmp_path / "state", *argv)
    assert (result.returncode, result.stderr) == (2, f"virtbackup: error: {error}\n")


def test_an_overlay_in_the_way_is_refused(
    backup: Path, new_name: str, libvirt_conn: Any, tmp_path: Path
) -> None:
    (tmp_path / "to").mkdir()
    (tmp_path / "to" / "vda.qcow2").write_bytes(b"mine")
    result = virtbackup_in(tmp_path / "state", *_argv(backup, tmp_path / "to", new_name))
    assert result.returncode != 0
    assert result.stderr.startswith(f"virtbackup: error: {tmp_path / 'to' / 'vda.qcow2'} already")
    assert len(result.stderr.splitlines()) == 1
    assert (tmp_path / "to" / "vda.qcow2").read_bytes() == b"mine"
    assert new_name not in [dom.name() for dom in libvirt_conn.listAllDomains()]
