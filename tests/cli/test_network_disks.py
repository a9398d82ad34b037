"""Network and block disks of running domains, read through libvirt's backup API from
real servers on this host (`qemu-nbd` on a unix socket, Debian's `tgtd` on loopback with
CHAP through a libvirt secret, a loop device): each generation restores byte-identical
to a copy taken at the backup's instant; restore writes into a source only with
--to-source (with CHAP through the libvirt secret), refusing a source in use, of another
size, held, or whose secret it cannot read; credentials appear nowhere (no file of the
backup, no log, no process's argument list sampled while it runs); a run killed mid-job
leaves nothing once `clean` has run (scratch files in --overlay-dir or beside the job's
socket); a shut-off domain's network disk is left out with the reason."""

import hashlib
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from argv_watch import argument_lists
from backup_api_helpers import backup, interrupted_mid_job, job_leftovers
from consistency_helpers import guest_write
from harness.cli import start_virtbackup, virtbackup_in
from harness.libvirtd import DiskSpec, DomainFactory
from network_servers import iscsi_target, nbd_server

from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.core.backup_job import SOCKET_DIR
from virtbackup.core.source_write import SECRET_ID

MiB = 1024 * 1024


def api_backup(state_dir: Path, dest: Path, name: str, *global_args: str) -> dict[str, Any]:
    row = backup(state_dir, dest, name, global_args=global_args)
    assert row["method"] == "backup-api", row
    return row


def references(dom: Any, sources: dict[str, list[str]], directory: Path) -> dict[str, Path]:
    """The guest's view of each disk now (target -> qemu-img source arguments): paused,
    copied as raw, resumed."""
    directory.mkdir()
    copies = {target: directory / f"{target}.raw" for target in sources}
    dom.suspend()
    try:
        for target, source in sources.items():
            argv = ["qemu-img", "convert", "-U", *source, "-O", "raw", str(copies[target])]
            subprocess.run(argv, check=True)
    finally:
        dom.resume()
    return copies


def restore(state_dir: Path, backup_dir: str, to: Path) -> subprocess.CompletedProcess[str]:
    result = virtbackup_in(state_dir, "restore", backup_dir, "--to", str(to))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def assert_identical(restored: Path, expected: dict[str, Path]) -> None:
    for target, copy in expected.items():
        subprocess.run(["cmp", str(copy), str(restored / f"{target}.raw")], check=True)


def assert_no_job_left(hypervisor: Hypervisor, name: str, workdir: Path) -> None:
    assert job_leftovers(hypervisor, name, workdir) == []
    uuid_ = hypervisor.domain(name).uuid
    assert list(Path(SOCKET_DIR).glob(f"{uuid_}*")) == []  # scratch files of non-file disks


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_nbd_disk_is_backed_up_twice_and_restored_as_files_only(
    domain_factory: DomainFactory,
    hypervisor: Hypervisor,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    served = domain_factory.blank_image("net-served.raw", "raw", 16 * MiB)
    with nbd_server(served, domain_factory.workdir / "nbd.sock") as nbd:
        # a qcow2 file beside it: its changes are tracked, the NBD disk is read in full
        dom = domain_factory.create(
            [DiskSpec("qcow2", 16 * MiB)], hint="nbd", start=True, devices_xml=nbd.disk_xml("vdb")
        )
        qcow2 = ["-f", "qcow2", str(domain_factory.workdir / "nbd-disk0.qcow2")]
        sources = {"vda": qcow2, "vdb": ["-f", "raw", nbd.url]}
        listed = virtbackup_in(state_dir, "list", dom.name(), "--json", "--layout", "repository")
        (plan,) = json.loads(listed.stdout)["domains"]
        assert plan["method"] == "backup-api" and "vdb on the network" in plan["reason"], plan
        reasons = {d["target"]: d["reason"] for d in plan["disks"]}
        assert reasons["vda"].endswith("only what changed since the last backup"), reasons
        assert f"network disk (nbd://unix:{nbd.socket})" in reasons["vdb"], reasons
        assert "in full each time, raw keeps no change bitmaps" in reasons["vdb"], reasons

        guest_write(dom, "virtio-disk1", 5, 1 * MiB, 3 * MiB)
        guest_write(dom, "virtio-disk0", 6, 2 * MiB, 1 * MiB)
        first_refs = references(dom, sources, tmp_path / "ref1")
        first = api_backup(state_dir, dest, dom.name())
        manifest = json.loads((Path(first["backup"]) / "manifest.json").read_text())
        by_target = {d["target"]: d for d in manifest["disks"]}
        assert by_target["vdb"]["source"] == f"nbd://unix:{nbd.socket}"
        assert by_target["vdb"]["virtual_size"] == 16 * MiB  # as qemu knows it
        assert manifest["checkpoint"].startswith("virtbackup-")  # for vda's bitmap

        guest_write(dom, "virtio-disk1", 8, 9 * MiB, 2 * MiB)
        guest_write(dom, "virtio-disk0", 9, 4 * MiB, 1 * MiB)
        second_refs = references(dom, sources, tmp_path / "ref2")
        time.sleep(1.1)  # a new stamp
        second = api_backup(state_dir, dest, dom.name())
        # vda's changes since the first backup, vdb (no bitmap) in full, in one job
        assert not any("read in full" in warning for warning in second["warnings"]), second
        second_manifest = json.loads((Path(second["backup"]) / "manifest.json").read_text())
        assert second_manifest["checkpoint"] != manifest["checkpoint"]
        assert dom.isActive() and dom.state()[0] == 1  # running throughout
        assert_no_job_left(hypervisor, dom.name(), domain_factory.workdir)

        before = digest(served)
        restore(state_dir, first["backup"], tmp_path / "r1")
        assert_identical(tmp_path / "r1", first_refs)
        restored = restore(state_dir, second["backup"], tmp_path / "r2")
        assert_identical(tmp_path / "r2", second_refs)
        assert digest(served) == before  # the network volume is never written
        assert (
            f"vdb was the network disk nbd://unix:{nbd.socket}: restored to "
            f"{tmp_path / 'r2' / 'vdb.raw'} only, the volume is not written"
        ) in restored.stderr
        assert "qemu-img convert -n -f raw -O raw" in restored.stderr


def test_a_block_disk_of_a_running_domain_is_read_through_the_backup_api(
    domain_factory: DomainFactory,
    hypervisor: Hypervisor,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    dom = domain_factory.create([DiskSpec("block", 16 * MiB)], hint="blk", start=True)
    device = hypervisor.facts(hypervisor.domain(dom.name())).disks[0].path
    assert device is not None and device.startswith("/dev/loop")
    guest_write(dom, "virtio-disk0", 4, 3 * MiB, 5 * MiB)
    expected = references(dom, {"vda": ["-f", "raw", device]}, tmp_path / "ref")
    row = api_backup(state_dir, dest, dom.name())
    assert dom.state()[0] == 1
    assert_no_job_left(hypervisor, dom.name(), domain_factory.workdir)
    restore(state_dir, row["backup"], tmp_path / "r")
    assert_identical(tmp_path / "r", expected)


def all_bytes_under(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def test_an_iscsi_disk_with_chap_credentials_and_the_domain_shut_off(
    domain_factory: DomainFactory,
    libvirt_conn: Any,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    lun = domain_factory.blank_image("lun.raw", "raw", 16 * MiB)
    password = f"chap-{uuid.uuid4().hex}"
    usage = f"{domain_factory.name('chap')}-usage"
    secret = libvirt_conn.secretDefineXML(
        f"<secret ephemeral='no' private='no'><usage type='iscsi'><target>{usage}</target>"
        "</usage></secret>"
    )
    try:
        secret.setValue(password.encode())
        iqn = f"iqn.2026-01.test.virtbackup:{domain_factory.tag}"
        with iscsi_target(lun, iqn, chap=("vbuser", password)) as target:
            auth = f"<auth username='vbuser'><secret type='iscsi' usage='{usage}'/></auth>"
            dom = domain_factory.create(
                [], hint="iscsi", start=True, devices_xml=target.disk_xml("vda", auth)
            )
            guest_write(dom, "virtio-disk0", 7, 2 * MiB, 6 * MiB)
            expected = references(dom, {"vda": ["-f", "raw", str(lun)]}, tmp_path / "ref")
            log = tmp_path / "run.log"
            with argument_lists() as during_backup:
                row = api_backup(state_dir, dest, dom.name(), "-v", "--log-file", str(log))
            assert any(b"virtbackup\0" in argv and b"\0backup\0" in argv for argv in during_backup)
            assert "vbtest" in log.read_text()  # the log was written
            restore(state_dir, row["backup"], tmp_path / "r")
            assert_identical(tmp_path / "r", expected)
            manifest = json.loads((Path(row["backup"]) / "manifest.json").read_text())
            assert manifest["disks"][0]["source"] == target.url
            assert "checkpoint" not in manifest  # no disk keeps a bitmap

            # shut off: the network disk is left out with the reason, exit 1
            dom.destroy()
            off = virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(dest), "--json")
            assert off.returncode == 1, off.stdout + off.stderr
            (off_row,) = json.loads(off.stdout)["domains"]
            assert off_row["result"] == "incomplete", off_row
            assert "start the domain to back it up" in off.stdout, off.stdout
            listed = virtbackup_in(state_dir, "list", dom.name(), "--json")
            (plan,) = json.loads(listed.stdout)["domains"]
            assert "start the domain to back it up" in plan["disks"][0]["reason"], plan
            said = json.dumps(row) + off.stdout + off.stderr + listed.stdout + listed.stderr

            # written back through CHAP, the secret read from libvirt at run time
            scribble = ["qemu-io", "-f", "raw", "-c", "write -P 9 0 8M", str(lun)]
            subprocess.run(scribble, check=True, capture_output=True)
            with argument_lists() as during_put_back:
                put_back = to_source(state_dir, row["backup"], tmp_path / "r2")
            assert put_back.returncode == 0, put_back.stdout + put_back.stderr
            assert f"vda\twritten into {target.url}" in put_back.stdout
            subprocess.run(["cmp", str(expected["vda"]), str(lun)], check=True)
            said += put_back.stdout + put_back.stderr
            assert list(Path(tempfile.gettempdir()).glob("virtbackup-secret-*")) == []

            secret.undefine()
            secret = None
            gone = to_source(state_dir, row["backup"], tmp_path / "r3")
            assert_refused(gone, "vda: cannot read the libvirt secret that opens", tmp_path / "r3")
            dom.undefine()  # the backup's domain.xml does not name the secret
            unnamed = to_source(state_dir, row["backup"], tmp_path / "r4")
            message = f"vda: the backup does not say which libvirt secret opens {target.url}"
            assert_refused(unnamed, message, tmp_path / "r4")
            said += gone.stdout + gone.stderr + unnamed.stdout + unnamed.stderr
    finally:
        if secret is not None:
            secret.undefine()
    for text in (password, usage):
        assert text not in said
        for argv in during_backup + during_put_back:
            assert text.encode() not in argv, argv
        assert text.encode() not in log.read_bytes()
        assert text.encode() not in all_bytes_under(dest), f"{text} in a file of the backup"
    # qemu-img was seen, given the secret by a file
    handed = f"secret,id={SECRET_ID},file=".encode()
    assert any(argv.startswith(b"qemu-img\0") and handed in argv for argv in during_put_back)


def to_source(state_dir: Path, backup_dir: str, to: Path) -> subprocess.CompletedProcess[str]:
    return virtbackup_in(state_dir, "restore", backup_dir, "--to", str(to), "--to-source")


def assert_refused(result: subprocess.CompletedProcess[str], message: str, to: Path) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr, result.stderr
    assert not to.exists()  # every source is checked before anything is written


def test_restore_to_source_writes_an_nbd_volume_and_a_block_device_back(
    domain_factory: DomainFactory,
    hypervisor: Hypervisor,
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    served = domain_factory.blank_image("put-back.raw", "raw", 16 * MiB)
    with nbd_server(served, domain_factory.workdir / "put-back.sock") as nbd:
        dom = domain_factory.create(
            [DiskSpec("block", 16 * MiB)], hint="put", start=True, devices_xml=nbd.disk_xml("vdb")
        )
        device = hypervisor.facts(hypervisor.domain(dom.name())).disks[0].path
        assert device is not None
        backing = domain_factory.workdir / "put-disk0.raw"
        guest_write(dom, "virtio-disk0", 3, 1 * MiB, 4 * MiB)
        guest_write(dom, "virtio-disk1", 5, 6 * MiB, 3 * MiB)
        expected = references(
            dom, {"vda": ["-f", "raw", device], "vdb": ["-f", "raw", nbd.url]}, tmp_path / "ref"
        )
        row = api_backup(state_dir, dest, dom.name())
        to = tmp_path / "r"

        running = to_source(state_dir, row["backup"], to)
        assert_refused(running, f"{dom.name()} is running: restore --to-source writes only", to)
        dom.destroy()
        same_device = (
            "<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
            f"<source dev='{device}'/><target dev='vda' bus='virtio'/></disk>"
        )
        other = domain_factory.create([], hint="other", start=True, devices_xml=same_device)
        used = to_source(state_dir, row["backup"], to)
        assert_refused(used, f"vda: {device} is in use by the running domain {other.name()}", to)
        other.destroy()
        # scribbled on while shut off: through the NBD server, and on the device itself
        scribble = ["qemu-io", "-f", "raw", "-c", "write -P 9 0 8M"]
        subprocess.run([*scribble, nbd.url], check=True, capture_output=True)
        subprocess.run([*scribble, device], check=True, capture_output=True)

        subprocess.run(["truncate", "-s", str(32 * MiB), str(backing)], check=True)
        subprocess.run(["losetup", "--set-capacity", device], check=True)
        grown = to_source(state_dir, row["backup"], to)
        assert_refused(grown, f"vda: {device} holds {32 * MiB} bytes, the backed-up disk", to)
        subprocess.run(["truncate", "-s", str(16 * MiB), str(backing)], check=True)
        subprocess.run(["losetup", "--set-capacity", device], check=True)

        holder = os.open(device, os.O_RDONLY | os.O_EXCL)  # as a mount holds it
        try:
            held = to_source(state_dir, row["backup"], to)
        finally:
            os.close(holder)
        assert_refused(held, f"vda: {device} is held by another user", to)

        done = to_source(state_dir, row["backup"], to)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"vda\twritten into {device}" in done.stdout
        assert f"vdb\twritten into nbd://unix:{nbd.socket}" in done.stdout
        assert "the volume is not written" not in done.stderr
        subprocess.run(["cmp", str(expected["vda"]), device], check=True)
        subprocess.run(["cmp", str(expected["vdb"]), str(served)], check=True)
        assert_identical(to, expected)  # the image files are kept as well


@pytest.mark.parametrize("overlay_dir", [False, True])
def test_a_backup_killed_mid_job_on_network_and_block_disks_is_cleaned(
    domain_factory: DomainFactory,
    hypervisor: Hypervisor,
    state_dir: Path,
    dest: Path,
    overlay_dir: bool,
) -> None:
    served = domain_factory.blank_image("killed.raw", "raw", 32 * MiB)
    with nbd_server(served, domain_factory.workdir / "killed.sock") as nbd:
        raw = domain_factory.create(
            [DiskSpec("block", 32 * MiB)], hint="kill", start=True, devices_xml=nbd.disk_xml("vdb")
        )
        for offset in range(0, 32 * MiB, 8 * MiB):
            guest_write(raw, "virtio-disk0", 1 + offset // MiB, offset, 4 * MiB)
            guest_write(raw, "virtio-disk1", 2 + offset // MiB, offset, 4 * MiB)
        dom = hypervisor.domain(raw.name())
        # qemu writes the scratch files: a directory it can reach
        scratch_dir = domain_factory.workdir / "overlays" if overlay_dir else Path(SOCKET_DIR)
        scratch_dir.mkdir(exist_ok=True)
        options = ("--overlay-dir", str(scratch_dir)) if overlay_dir else ()
        status = interrupted_mid_job(dom, state_dir, dest, signal.SIGKILL, *options)
        assert status == -signal.SIGKILL
        # neither disk is a file: both scratch files are in --overlay-dir, else beside
        # the job's socket
        scratch = {p.name.split(".")[0] for p in scratch_dir.glob(f"{dom.uuid}-*.scratch")}
        assert scratch == {f"{dom.uuid}-vda", f"{dom.uuid}-vdb"}, scratch
        assert list(Path(SOCKET_DIR).glob(f"{dom.uuid}.*.sock")) != []
        assert dom.backups.job_xml() is not None

        cleaned = virtbackup_in(state_dir, "clean")
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        assert "end the backup job" in cleaned.stdout + cleaned.stderr
        assert_no_job_left(hypervisor, raw.name(), domain_factory.workdir)
        assert list(scratch_dir.glob(f"{dom.uuid}*")) == []
        assert raw.state()[0] == 1  # still running
        assert backup(state_dir, dest, raw.name(), *options)["method"] == "backup-api"
        assert_no_job_left(hypervisor, raw.name(), domain_factory.workdir)
        assert list(scratch_dir.glob(f"{dom.uuid}*")) == []


def test_restore_to_source_writes_the_sources_of_this_host_only(
    state_dir: Path, tmp_path: Path
) -> None:
    uri = "qemu+ssh://elsewhere.invalid/system"
    args = ("restore", str(tmp_path / "any"), "--to", str(tmp_path / "r"), "--to-source")
    refused = virtbackup_in(state_dir, "--connect", uri, *args)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"--to-source writes the sources of this host only, not of {uri}" in refused.stderr


# SIGKILL: the test of a backup killed mid-job above
@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_a_signal_mid_job_on_a_network_disk_leaves_nothing_once_clean(
    signum: int,
    domain_factory: DomainFactory,
    hypervisor: Hypervisor,
    state_dir: Path,
    dest: Path,
) -> None:
    served = domain_factory.blank_image("sig-served.raw", "raw", 16 * MiB)
    with nbd_server(served, domain_factory.workdir / "sig.sock") as nbd:
        dom = domain_factory.create([], hint="netsig", start=True, devices_xml=nbd.disk_xml("vda"))
        guest_write(dom, "virtio-disk0", 3, 0, 8 * MiB)  # 8 s to read at 1 MiB/s
        before = digest(served)
        args = ["backup", dom.name(), "--dest", str(dest), "--layout", "repository"]
        running = start_virtbackup(state_dir, *args, "--bwlimit", "1M")
        try:
            deadline = time.monotonic() + 60
            while "job" not in job_leftovers(hypervisor, dom.name(), domain_factory.workdir):
                assert running.poll() is None and time.monotonic() < deadline, "no job seen"
                time.sleep(0.05)
            time.sleep(1)  # reading
            running.send_signal(signum)
            assert running.wait(timeout=60) == (130 if signum == signal.SIGTERM else -signum)
        finally:
            running.kill()
            running.communicate()
        cleaned = virtbackup_in(state_dir, "clean")
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        assert_no_job_left(hypervisor, dom.name(), domain_factory.workdir)
        assert dom.isActive() and dom.state()[0] == 1  # running as before
        assert digest(served) == before  # the network volume was only read
