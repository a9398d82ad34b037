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
def test_keep_host_devices_keeps_them_but_not_other_disks(
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
    xml = libvirt_conn.lookupByName(name).XMLDesc(0)
    for host_thing in HOST_THINGS:
        assert (host_thing in xml) is (host_thing not in ("/dev/vda", "10809"))
    assert "commandline" in xml
    # Never the original's disks the backup did not restore.
    assert [d.get("dev") for d in ET.fromstring(xml).iter("target") if d.get("dev")] == ["vda"]
    (warning,) = [line for line in result.stderr.splitlines() if "defined without" in line]
    assert warning == (
        f"virtbackup: warning: {name} was defined without the original's disks the backup "
        "did not restore: disk vdb (block /dev/vda); disk vdc (network nbd://127.0.0.1:10809/x)"
    )
    assert "6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11" not in xml  # still a new domain


# Elements --define keeps, each with a part that reaches the host (libvirt accepts them all).
REACHING_XML = """<domain type='qemu'>
  <name>web1</name>
  <memory unit='MiB'>64</memory>
  <blkiotune><weight>500</weight>
    <device><path>/dev/sda</path><weight>1000</weight></device></blkiotune>
  <resource><partition>/machine/vbtest</partition></resource>
  <os><type arch='x86_64' machine='pc'>hvm</type><smbios mode='host'/></os>
  <seclabel type='dynamic' model='selinux'><baselabel>unconfined_t</baselabel></seclabel>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>
      <source file='/var/lib/libvirt/images/web1.raw'/>
      <encryption format='luks'>
        <secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/></encryption>
      <auth username='u'><secret type='iscsi' usage='hostsecret'/></auth>
      <target dev='vda' bus='virtio'/><serial>S1</serial></disk>
    <interface type='user'><source dev='eth0'/>
      <portForward proto='tcp' address='0.0.0.0'><range start='2222' to='22'/></portForward>
      <model type='virtio'/></interface>
    <graphics type='vnc' port='5999' autoport='no' listen='0.0.0.0'>
      <listen type='address' address='0.0.0.0'/></graphics>
  </devices>
</domain>
"""


@pytest.mark.libvirt
def test_define_keeps_the_guest_view_of_kept_elements(
    libvirt_conn: Any, defined: list[str], forged_backup: Path, tmp_path: Path, state_dir: Path
) -> None:
    _forge_domain_xml(forged_backup, REACHING_XML)
    name = _new_name(defined, "reach")
    to = tmp_path / "restored"
    result = virtbackup_in(
        state_dir, "restore", str(forged_backup), "--to", str(to), "--define", name
    )
    assert result.returncode == 0, result.stderr
    xml = libvirt_conn.lookupByName(name).XMLDesc(0)
    for host_thing in ("/dev/sda", "/machine/vbtest", "unconfined_t", "secret", "0.0.0.0", "5999"):
        assert host_thing not in xml
    domain = ET.fromstring(xml)
    assert domain.findtext("blkiotune/weight") == "500"
    assert domain.find("os/smbios") is None
    assert domain.find("seclabel/baselabel") is None
    (disk,) = domain.findall("devices/disk")
    assert disk.find("encryption") is None and disk.find("auth") is None
    assert disk.findtext("serial") == "S1" and disk.find("driver").get("cache") == "none"  # type: ignore[union-attr]
    assert disk.find("source").get("file") == str(to / "vda.raw")  # type: ignore[union-attr]
    (interface,) = domain.findall("devices/interface")
    assert interface.get("type") == "user" and interface.find("portForward") is None
    (graphics,) = domain.findall("devices/graphics")
    assert graphics.get("autoport") == "yes" and graphics.get("port") == "-1"
    (warning,) = [line for line in result.stderr.splitlines() if "defined without" in line]
    assert warning.startswith(f"virtbackup: warning: {name} was defined without host resources")
    for named in (
        "blkiotune device /dev/sda",
        "resource /machine/vbtest",
        "os smbios host",
        "seclabel baselabel unconfined_t",
        "disk vda encryption secret 0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f",
        "disk vda auth secret hostsecret",
        "interface user source eth0",
        "interface port forward 0.0.0.0 tcp",
        "graphics vnc port 5999, listen 0.0.0.0",
    ):
        assert named in warning


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


NBD_SHUT_OFF = (
    "network disk (nbd://127.0.0.1:10809/export): read through the running domain's qemu "
    "only; start the domain to back it up (or back the volume up on the storage side)"
)


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
    assert row["left_out"] == [f"vda: {NBD_SHUT_OFF}"]
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
        NBD_SHUT_OFF,
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


def _data_elsewhere_domain(domain_factory: DomainFactory) -> tuple[Any, Path, Path]:
    """vda a raw file; vdb a vmdk descriptor naming a FLAT extent; vdc a qcow2 whose data
    is in an external raw data file. Returns the domain and the two data files."""
    work = domain_factory.workdir
    raw = domain_factory.blank_image("plain.raw", "raw", 4 * MiB)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat"]
        + [str(work / "d.vmdk"), "4M"],
        check=True,
    )
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o"]
        + [f"data_file={work / 'ext.data'},data_file_raw=on", str(work / "df.qcow2"), "8M"],
        check=True,
    )
    dom = domain_factory.define(f"""<domain type='qemu'>
  <name>{domain_factory.name("elsewhere")}</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='{raw}'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='vmdk'/>
      <source file='{work / "d.vmdk"}'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{work / "df.qcow2"}'/><target dev='vdc' bus='virtio'/></disk>
  </devices>
</domain>""")
    return dom, work / "d-flat.vmdk", work / "ext.data"


@pytest.mark.libvirt
def test_images_whose_data_is_in_other_files_make_the_backup_incomplete(
    domain_factory: DomainFactory, state_dir: Path, dest: Path
) -> None:
    dom, extent, data_file = _data_elsewhere_domain(domain_factory)
    vdb_reason = (
        f"its vmdk image keeps its data in extent files ({extent}): convert it to qcow2 or raw"
    )
    vdc_reason = (
        f"its qcow2 image keeps its data in an external data file ({data_file}): "
        "convert it to a qcow2 without one"
    )
    listed = virtbackup_in(state_dir, "list", dom.name(), "--json")
    assert listed.returncode == 0, listed.stderr
    (domain,) = json.loads(listed.stdout)["domains"]
    disks = {d["target"]: (d["backup"], d["left_out"], d["reason"]) for d in domain["disks"]}
    assert disks["vdb"] == (False, True, vdb_reason)
    assert disks["vdc"] == (False, True, vdc_reason)
    assert disks["vda"][:2] == (True, False)

    result = virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(dest), "--json")
    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)["domains"]
    assert (row["result"], row["disks"]) == ("incomplete", 1)
    assert row["left_out"] == [f"vdb: {vdb_reason}", f"vdc: {vdc_reason}"]
    (backup,) = (dest / dom.name()).iterdir()
    manifest = json.loads((backup / "manifest.json").read_text())
    assert [d["target"] for d in manifest["disks"]] == ["vda"]
    assert [d["target"] for d in manifest["left_out"]] == ["vdb", "vdc"]

    doctor = virtbackup_in(state_dir, "doctor", dom.name(), "--no-guestfs", "--json")
    assert doctor.returncode == 1, doctor.stderr
    found = [f for f in json.loads(doctor.stdout)["findings"] if f["check"] == "left-out"]
    assert sorted((f["severity"], f["disk"]) for f in found) == [
        ("blocker", "vdb"),
        ("blocker", "vdc"),
    ]


VMDK_XML = """<domain type='qemu'>
  <name>web1</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='vmdk'/>
      <source file='/var/lib/libvirt/images/web1.vmdk'/><target dev='vda' bus='virtio'/></disk>
  </devices>
</domain>
"""


@pytest.mark.libvirt
def test_a_forged_vmdk_naming_a_host_file_is_not_attached(
    domain_factory: DomainFactory,
    libvirt_conn: Any,
    defined: list[str],
    tmp_path: Path,
    state_dir: Path,
) -> None:
    victim = domain_factory.blank_image("victim.raw", "raw", MiB)
    descriptor = tmp_path / "web1.vmdk"
    descriptor.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        f'createType="monolithicFlat"\nRW 2048 FLAT "{victim}" 0\n'
    )
    backup = Path(make_backup(tmp_path / "dest", [disk_of(descriptor, "vda", "vmdk")]).path)
    _forge_domain_xml(backup, VMDK_XML)
    assert virtbackup_in(state_dir, "verify", str(backup)).returncode == 0

    name = _new_name(defined, "vmdk")
    to = tmp_path / "restored"
    result = virtbackup_in(state_dir, "restore", str(backup), "--to", str(to), "--define", name)
    assert result.returncode == 0, result.stderr
    assert (to / "vda.vmdk").read_bytes() == descriptor.read_bytes()
    why = "disk vda (its vmdk image can name other host files; only raw and qcow2 are attached)"
    assert why in result.stderr
    xml = libvirt_conn.lookupByName(name).XMLDesc(0)
    assert ET.fromstring(xml).findall("devices/disk") == [] and str(victim) not in xml


@pytest.mark.libvirt
def test_keep_host_devices_never_attaches_a_left_out_disk(
    domain_factory: DomainFactory,
    libvirt_conn: Any,
    defined: list[str],
    state_dir: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    dom = _nbd_and_file_domain(domain_factory)
    assert virtbackup_in(state_dir, "backup", dom.name(), "--dest", str(dest)).returncode == 1
    (backup,) = (dest / dom.name()).iterdir()
    assert [
        d["target"] for d in json.loads((backup / "manifest.json").read_text())["left_out"]
    ] == ["vda"]
    name = _new_name(defined, "keep")
    restore = virtbackup_in(
        state_dir,
        "restore",
        str(backup),
        "--to",
        str(tmp_path / "r"),
        "--define",
        name,
        "--keep-host-devices",
    )
    assert restore.returncode == 0, restore.stderr
    xml = libvirt_conn.lookupByName(name).XMLDesc(0)
    assert "10809" not in xml and "nbd" not in xml
    disks = ET.fromstring(xml).findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vdb"]  # type: ignore[union-attr]
    assert disks[0].find("source").get("file") == str(tmp_path / "r/vdb.raw")  # type: ignore[union-attr]
    (warning,) = [line for line in restore.stderr.splitlines() if "defined without" in line]
    assert warning == (
        f"virtbackup: warning: {name} was defined without the original's disks the backup "
        "did not restore: disk vda (network nbd://127.0.0.1:10809/export)"
    )
