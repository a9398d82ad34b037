"""`restore --define` gives back the guest, not host access; a disk that is not backed up
is never silent. Real backups, a real libvirtd, the CLI in a child process."""

import hashlib
import json
import os
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backup_helpers import MiB, disk_of, make_backup
from harness.cli import virtbackup_in
from harness.libvirtd import DomainFactory

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"

# What a forged backup's domain.xml asks for besides its one restored disk (vda).
FORGED_XML = """<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web1</name>
  <uuid>6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11</uuid>
  <memory unit='MiB'>64</memory>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>/boot/vmlinuz</kernel><initrd>/etc/shadow</initrd>
  </os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/web1.raw'/><target dev='vda' bus='virtio'/></disk>
    <disk type='block' device='disk'><driver name='qemu' type='raw'/>
      <source dev='/dev/vda'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/>
      <source protocol='nbd' name='x'><host name='127.0.0.1' port='10809'/></source>
      <target dev='vdc' bus='virtio'/></disk>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir='/'/><target dir='host'/></filesystem>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0' bus='0' slot='31' function='3'/></source></hostdev>
    <interface type='network'><mac address='52:54:00:12:34:56'/>
      <source network='default'/></interface>
    <serial type='file'><source path='/etc/cron.d/vbtest-evil'/><target port='0'/></serial>
    <channel type='unix'><source mode='connect' path='/run/libvirt/libvirt-sock'/>
      <target type='virtio' name='org.example.evil'/></channel>
    <shmem name='vbtest-evil'><model type='ivshmem-plain'/><size unit='M'>1</size></shmem>
  </devices>
  <qemu:commandline><qemu:arg value='-drive'/><qemu:arg value='file=/dev/sda,if=none'/>
  </qemu:commandline>
</domain>
"""
HOST_THINGS = ("/dev/vda", "10809", "<filesystem", "<hostdev", "/etc/", "/run/", "<shmem")


@pytest.fixture
def defined(libvirt_conn: Any, libvirt: Any) -> Iterator[list[str]]:
    """Names of domains a test defines through the CLI; each is undefined after it."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            libvirt_conn.lookupByName(name).undefine()
        except libvirt.libvirtError:
            pass


def _new_name(defined: list[str], hint: str) -> str:
    name = f"vbtest-{uuid.uuid4().hex[:8]}-{hint}"
    defined.append(name)
    return name


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _forge_domain_xml(backup: Path, xml: str) -> None:
    """Put `xml` in an unsigned backup as its domain XML, the manifest's record of it
    changed to match (what anyone who can write an unsigned backup can do)."""
    (backup / "domain.xml").write_text(xml)
    document = json.loads((backup / "manifest.json").read_text())
    document["domain_xml_sha256"] = hashlib.sha256(xml.encode()).hexdigest()
    (backup / "manifest.json").write_text(json.dumps(document))


@pytest.fixture
def forged_backup(tmp_path: Path) -> Path:
    image = tmp_path / "web1.raw"
    image.write_bytes(os.urandom(MiB) + bytes(MiB))
    backup = Path(make_backup(tmp_path / "dest", [disk_of(image)]).path)
    _forge_domain_xml(backup, FORGED_XML)
    return backup


@pytest.mark.libvirt
def test_define_drops_host_resources_and_names_them(
    libvirt_conn: Any, defined: list[str], forged_backup: Path, tmp_path: Path, state_dir: Path
) -> None:
    name = _new_name(defined, "copy")
    to = tmp_path / "restored"
    result = virtbackup_in(
        state_dir, "restore", str(forged_backup), "--to", str(to), "--define", name
    )
    assert result.returncode == 0, result.stderr
    xml = libvirt_conn.lookupByName(name).XMLDesc(0)
    for host_thing in HOST_THINGS:
        assert host_thing not in xml
    domain = ET.fromstring(xml)
    assert domain.find(f"{{{QEMU_NS}}}commandline") is None
    assert domain.find("os/kernel") is None and domain.find("os/initrd") is None
    (disk,) = domain.findall("devices/disk")
    assert disk.find("source").get("file") == str(to / "vda.raw")  # type: ignore[union-attr]
    assert domain.findtext("uuid") != "6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11"
    interface = domain.find("devices/interface/mac")
    assert interface is not None and interface.get("address") != "52:54:00:12:34:56"
    channel = domain.find("devices/channel/target")
    assert channel is not None and channel.get("name") == "org.example.evil"  # without socket
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, result.stderr
    assert "libvirt:" not in result.stderr  # libvirt's own error printing stays off
    for named in (
        "os kernel /boot/vmlinuz",
        "os initrd /etc/shadow",
        "disk vdb (block /dev/vda)",
        "disk vdc (network nbd://127.0.0.1:10809/x)",
        "filesystem /",
        "hostdev",
        "serial file /etc/cron.d/vbtest-evil",
        "channel socket /run/libvirt/libvirt-sock",
        "shmem",
        "qemu:commandline",
        "--keep-host-devices",
    ):
        assert named in warnings[0]


@pytest.mark.libvirt
def test_keep_host_devices_keeps_them(
    libvirt_conn: Any, defined: list[str], forged_backup: Path, tmp_path: Path, state_dir: Path
) -> None:
    name = _new_name(defined, "keep")
    result = virtbackup_in(
        state_dir,
        "restore",
        str(forged_backup),
        "--to",
        str(tmp_path / "restored"),
        "--define",
        name,
        "--keep-host-devices",
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    xml = libvirt_conn.lookupByName(name).XMLDesc(0)
    for host_thing in HOST_THINGS:
        assert host_thing in xml
    assert "commandline" in xml
    assert "6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11" not in xml  # still a new domain


@pytest.mark.libvirt
@pytest.mark.parametrize("bad_name", ["", "a/b", "two\nlines"])
def test_a_bad_define_name_stops_before_anything_is_written(
    forged_backup: Path, tmp_path: Path, state_dir: Path, bad_name: str
) -> None:
    before = _tree(tmp_path)
    result = virtbackup_in(
        state_dir, "restore", str(forged_backup), "--to", str(tmp_path / "r"), "--define", bad_name
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "cannot name a domain" in line and "Traceback" not in result.stderr
    assert _tree(tmp_path) == before


def test_keep_host_devices_needs_define(
    forged_backup: Path, tmp_path: Path, state_dir: Path
) -> None:
    result = virtbackup_in(
        state_dir, "restore", str(forged_backup), "--to", str(tmp_path / "r"), "--keep-host-devices"
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "virtbackup: error: --keep-host-devices needs --define NAME"
    assert not (tmp_path / "r").exists()


# -- a disk that is not backed up ----------------------------------------------------------


def _nbd_and_file_domain(domain_factory: DomainFactory) -> Any:
    """vda on an NBD server (never contacted: the domain stays shut off), vdb a file."""
    image = domain_factory.blank_image("data.raw", "raw", 4 * MiB)
    return domain_factory.define(f"""<domain type='qemu'>
  <name>{domain_factory.name("nbd")}</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/>
      <source protocol='nbd' name='export'><host name='127.0.0.1' port='10809'/></source>
      <target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='{image}'/><target dev='vdb' bus='virtio'/></disk>
  </devices>
</domain>""")


@pytest.mark.libvirt
def test_a_network_disk_makes_the_backup_incomplete(
    domain_factory: DomainFactory,
    libvirt_conn: Any,
    defined: list[str],
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    dom = _nbd_and_file_domain(domain_factory)
    result = virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(dest), "--json")
    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert row["result"] == "incomplete" and row["disks"] == 1
    assert row["left_out"] == [
        "vda: network disks are not supported yet (nbd://127.0.0.1:10809/export)"
    ]
    assert "vda" in row["message"] and "exclude_disks" in row["message"]
    (backup,) = (dest / dom.name()).iterdir()
    manifest = json.loads((backup / "manifest.json").read_text())
    assert [d["target"] for d in manifest["disks"]] == ["vdb"]
    assert [d["target"] for d in manifest["left_out"]] == ["vda"]

    (tmp_path / "d2").mkdir()
    table = virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(tmp_path / "d2"))
    assert table.returncode == 1
    assert "incomplete" in table.stdout and "left out vda" in table.stdout

    # Restoring it never hands the copy the original's network disk.
    name = _new_name(defined, "copy")
    restore = virtbackup_in(
        state_dir, "restore", str(backup), "--to", str(tmp_path / "r"), "--define", name
    )
    assert restore.returncode == 0, restore.stderr
    disks = ET.fromstring(libvirt_conn.lookupByName(name).XMLDesc(0)).findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vdb"]  # type: ignore[union-attr]
    assert disks[0].find("source").get("file") == str(tmp_path / "r/vdb.raw")  # type: ignore[union-attr]
    assert "disk vda (network nbd://127.0.0.1:10809/export)" in restore.stderr


@pytest.mark.libvirt
def test_excluded_by_name_it_is_ok_and_named(
    domain_factory: DomainFactory, state_dir: Path, dest: Path, tmp_path: Path
) -> None:
    dom = _nbd_and_file_domain(domain_factory)
    config = tmp_path / "virtbackup.toml"
    config.write_text(f'[domain."{dom.name()}"]\nexclude_disks = ["vda"]\n')
    result = virtbackup_in(
        state_dir, "--config", str(config), "backup", dom.name(), "--dest", str(dest), "--json"
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert (row["result"], row["excluded"], row["left_out"]) == ("ok", ["vda"], [])
    (backup,) = (dest / dom.name()).iterdir()
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["left_out"] == [{"target": "vda", "reason": "excluded by configuration"}]


@pytest.mark.libvirt
def test_the_nightly_summary_names_it(
    domain_factory: DomainFactory, state_dir: Path, dest: Path
) -> None:
    dom = _nbd_and_file_domain(domain_factory)
    only_net = domain_factory.define(f"""<domain type='qemu'>
  <name>{domain_factory.name("onlynet")}</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><disk type='network' device='disk'><driver name='qemu' type='raw'/>
      <source protocol='nbd' name='e'><host name='127.0.0.1' port='10809'/></source>
      <target dev='vda' bus='virtio'/></disk></devices>
</domain>""")
    result = virtbackup_in(
        state_dir, "all", "--include", f"{domain_factory.name('')}*", "--dest", str(dest)
    )
    assert result.returncode == 1, result.stderr
    summary = json.loads((dest / "virtbackup-last-run.json").read_text())
    rows = {r["domain"]: r for r in summary["domains"]}
    assert rows[dom.name()]["result"] == "incomplete"
    assert rows[only_net.name()]["result"] == "incomplete"
    assert rows[only_net.name()]["message"].startswith("nothing backed up: vda: network")
    assert summary["exit_code"] == 1


@pytest.mark.libvirt
def test_list_and_doctor_say_it_before_the_backup(
    domain_factory: DomainFactory, state_dir: Path
) -> None:
    dom = _nbd_and_file_domain(domain_factory)
    listed = virtbackup_in(state_dir, "list", dom.name(), "--json")
    assert listed.returncode == 0, listed.stderr
    (domain,) = json.loads(listed.stdout)["domains"]
    disks = {d["target"]: (d["backup"], d["left_out"], d["reason"]) for d in domain["disks"]}
    assert disks["vda"] == (
        False,
        True,
        "network disks are not supported yet (nbd://127.0.0.1:10809/export)",
    )
    assert disks["vdb"][:2] == (True, False)
    doctor = virtbackup_in(state_dir, "doctor", dom.name(), "--no-guestfs", "--json")
    assert doctor.returncode == 1, doctor.stderr
    (finding,) = [f for f in json.loads(doctor.stdout)["findings"] if f["check"] == "left-out"]
    assert (finding["severity"], finding["disk"]) == ("blocker", "vda")
    assert 'exclude_disks = ["vda"]' in finding["fix"]


TWO_QCOW2_XML = """<domain type='qemu'>
  <name>web1</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/b.qcow2'/><target dev='vdb' bus='virtio'/></disk>
  </devices>
</domain>
"""


@pytest.mark.libvirt
def test_host_files_named_inside_the_images_are_cut(
    libvirt_conn: Any, defined: list[str], tmp_path: Path, state_dir: Path
) -> None:
    host_file = tmp_path / "host-secret.raw"
    host_file.write_bytes(os.urandom(MiB))
    backed = tmp_path / "backed.qcow2"
    data_image = tmp_path / "data.qcow2"
    for image, option in ((backed, ["-b", str(host_file), "-F", "raw"]), (data_image, [])):
        extra = option or ["-o", f"data_file={host_file}"]
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", *extra, str(image), "1M"], check=True
        )
    disks = [disk_of(backed, "vda", "qcow2"), disk_of(data_image, "vdb", "qcow2")]
    backup = Path(make_backup(tmp_path / "dest", disks).path)
    _forge_domain_xml(backup, TWO_QCOW2_XML)

    name = _new_name(defined, "cut")
    to = tmp_path / "restored"
    result = virtbackup_in(state_dir, "restore", str(backup), "--to", str(to), "--define", name)
    assert result.returncode == 0, result.stderr
    assert f"disk vda backing file {host_file}" in result.stderr
    assert f"disk vdb (its image's data file {host_file})" in result.stderr
    (vda,) = ET.fromstring(libvirt_conn.lookupByName(name).XMLDesc(0)).findall("devices/disk")
    assert vda.find("source").get("file") == str(to / "vda.qcow2")  # type: ignore[union-attr]
    backing_store = vda.find("backingStore")
    assert backing_store is not None and len(backing_store) == 0

    kept = _new_name(defined, "kept")
    to_kept = tmp_path / "kept"
    result = virtbackup_in(
        state_dir,
        "restore",
        str(backup),
        "--to",
        str(to_kept),
        "--define",
        kept,
        "--keep-host-devices",
    )
    assert result.returncode == 0, result.stderr
    disks_kept = ET.fromstring(libvirt_conn.lookupByName(kept).XMLDesc(0)).findall("devices/disk")
    assert len(disks_kept) == 2 and all(d.find("backingStore") is None for d in disks_kept)
