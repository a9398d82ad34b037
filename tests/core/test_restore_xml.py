import xml.etree.ElementTree as ET

import pytest

from virtbackup.core.errors import UsageError
from virtbackup.core.qcow2_refs import ImageReferences
from virtbackup.core.restore_xml import (
    RestoredDisk,
    RestoreXmlError,
    check_domain_name,
    domain_xml_for_restore,
)

LIVE_XML = """<domain type='qemu' id='7'>
  <name>web1</name>
  <uuid>6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11</uuid>
  <os>
    <type arch='x86_64'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
    <nvram>/var/lib/libvirt/qemu/nvram/web1_VARS.fd</nvram>
  </os>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='/dev/vg0/web1'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/data.qcow2'/>
      <backingStore type='file'><format type='raw'/><source file='/base.raw'/></backingStore>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/debian.iso'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:57'/>
      <source bridge='br0'/>
    </interface>
  </devices>
</domain>
"""

RESTORED = {
    "vda": RestoredDisk("/restore/vda.raw", "raw"),
    "vdb": RestoredDisk("/restore/vdb.qcow2", "qcow2"),
}


def _transform() -> ET.Element:
    new = domain_xml_for_restore(LIVE_XML, "web1-copy", RESTORED)
    assert new.dropped == ("cdrom sda medium /iso/debian.iso",)
    return ET.fromstring(new.xml)


def test_new_name_no_uuid_no_id_no_nvram() -> None:
    domain = _transform()
    assert domain.findtext("name") == "web1-copy"
    assert domain.find("uuid") is None
    assert "id" not in domain.attrib
    assert domain.find("os/nvram") is None
    assert domain.find("os/loader") is not None  # the firmware stays


def test_mac_addresses_dropped_interfaces_kept() -> None:
    domain = _transform()
    interfaces = domain.findall("devices/interface")
    assert len(interfaces) == 2
    assert domain.findall("devices/interface/mac") == []
    assert interfaces[1].find("source").get("bridge") == "br0"  # type: ignore[union-attr]


def test_disks_point_at_restored_files() -> None:
    disks = {d.find("target").get("dev"): d for d in _transform().findall("devices/disk")}  # type: ignore[union-attr]
    vda, vdb, cdrom = disks["vda"], disks["vdb"], disks["sda"]
    assert vda.get("type") == "file"
    assert vda.find("source").attrib == {"file": "/restore/vda.raw"}  # type: ignore[union-attr]
    assert vda.find("driver").get("cache") == "none"  # type: ignore[union-attr]
    assert vdb.find("source").get("file") == "/restore/vdb.qcow2"  # type: ignore[union-attr]
    assert vdb.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    backing_store = vdb.find("backingStore")  # empty: no backing file, whatever the header says
    assert backing_store is not None and len(backing_store) == 0 and not backing_store.attrib
    assert cdrom.find("source") is None  # the drive stays, the host's medium goes


@pytest.mark.parametrize(
    ("xml", "disks", "message"),
    [
        ("<domain", RESTORED, "not valid XML"),
        ("<network/>", RESTORED, "root element is <network>"),
        (LIVE_XML, {"vdz": RestoredDisk("/x", "raw")}, "no disk with target vdz"),
    ],
)
def test_bad_input(xml: str, disks: dict[str, RestoredDisk], message: str) -> None:
    with pytest.raises(RestoreXmlError, match=message):
        domain_xml_for_restore(xml, "copy", disks)


# A domain.xml as a forged backup could carry it: every host resource at once.
HOSTILE_XML = """<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>evil</name>
  <uuid>6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11</uuid>
  <genid>43dc0cf8-809b-4adb-9bea-a9abb5f3d90d</genid>
  <memory unit='MiB'>64</memory>
  <sysinfo type='fwcfg'><entry name='opt/x' file='/etc/shadow'/></sysinfo>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <loader readonly='no' type='pflash'>/dev/sdb</loader>
    <nvram template='/etc/shadow'>/var/lib/libvirt/qemu/nvram/evil_VARS.fd</nvram>
    <kernel>/boot/vmlinuz</kernel>
    <initrd>/etc/shadow</initrd>
    <cmdline>console=ttyS0</cmdline>
    <acpi><table type='slic'>/etc/ssh/ssh_host_ed25519_key</table></acpi>
    <boot dev='hd'/>
  </os>
  <seclabel type='none'/>
  <devices>
    <emulator>/tmp/evil-qemu</emulator>
    <disk type='file' device='disk' rawio='yes'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/evil.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/><source dev='/dev/vda'/><target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='nbd' name='x'><host name='10.0.0.1' port='10809'/></source>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='block' device='lun' sgio='unfiltered'>
      <source dev='/dev/sg0'/><target dev='sda' bus='scsi'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/etc/shadow'/><target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='cdrom'><source dev='/dev/sr0'/><target dev='hdc' bus='ide'/>
      <readonly/></disk>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir='/'/><target dir='host'/>
    </filesystem>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0' bus='1' slot='0' function='0'/></source>
    </hostdev>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/><source network='default'/>
      <script path='/tmp/evil.sh'/><rom file='/etc/shadow'/>
    </interface>
    <interface type='direct'><source dev='eth0' mode='bridge'/></interface>
    <interface type='ethernet'><script path='/tmp/evil.sh'/></interface>
    <serial type='pty'><log file='/etc/cron.d/evil'/><target port='0'/></serial>
    <serial type='file'><source path='/etc/cron.d/evil'/><target port='1'/></serial>
    <serial type='dev'><source path='/dev/ttyS0'/><target port='2'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-3-evil/ga.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <channel type='unix'>
      <source mode='connect' path='/run/libvirt/libvirt-sock'/>
      <target type='virtio' name='org.example.x'/>
    </channel>
    <channel type='unix'>
      <source mode='connect' path='/run/docker.sock'/>
      <target type='guestfwd' address='10.0.2.1' port='80'/>
    </channel>
    <redirdev bus='usb' type='tcp'>
      <source mode='connect' host='10.0.0.1' service='4000'/></redirdev>
    <redirdev bus='usb' type='spicevmc'/>
    <smartcard mode='host'/>
    <input type='tablet' bus='usb'/>
    <input type='evdev'><source dev='/dev/input/event0'/></input>
    <graphics type='vnc' port='-1'/>
    <graphics type='vnc' socket='/etc/evil.sock'/>
    <tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>
    <shmem name='evil'><model type='ivshmem-plain'/></shmem>
    <lease><lockspace>x</lockspace><key>k</key><target path='/etc/passwd'/></lease>
    <rng model='virtio'><backend model='random'>/dev/sda</backend></rng>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='virtio'/>
    <video><model type='cirrus'/></video>
    <video><model type='virtio'><acceleration rendernode='/dev/dri/renderD128'/></model></video>
    <audio id='1' type='file' path='/etc/cron.d/audio'/>
  </devices>
  <qemu:commandline><qemu:arg value='-drive'/><qemu:arg value='file=/dev/sda'/></qemu:commandline>
  <qemu:capabilities><qemu:del capability='sandbox'/></qemu:capabilities>
</domain>
"""

HOSTILE_DROPPED = (
    "sysinfo entry from /etc/shadow",
    "os loader /dev/sdb",
    "os kernel /boot/vmlinuz",
    "os initrd /etc/shadow",
    "os cmdline console=ttyS0",
    "os acpi",
    "seclabel none relabel=yes",
    "disk vdb (block /dev/vda)",
    "disk vdc (network nbd://10.0.0.1:10809/x)",
    "disk sda (block /dev/sg0)",
    "disk vda (file /etc/shadow)",
    "cdrom hdc medium /dev/sr0",
    "filesystem /",
    "hostdev",
    "interface script /tmp/evil.sh",
    "interface rom /etc/shadow",
    "interface direct",
    "interface ethernet",
    "serial log /etc/cron.d/evil",
    "serial file /etc/cron.d/evil",
    "serial dev /dev/ttyS0",
    "channel socket /run/libvirt/libvirt-sock",
    "channel unix /run/docker.sock",
    "redirdev tcp",
    "smartcard host",
    "input evdev /dev/input/event0",
    "graphics vnc socket /etc/evil.sock",
    "tpm passthrough",
    "shmem",
    "lease",
    "rng /dev/sda",
    "video rendernode /dev/dri/renderD128",
    "audio file",
    "qemu:commandline",
    "qemu:capabilities",
)


def _hostile(keep: bool = False) -> tuple[ET.Element, tuple[str, ...]]:
    restored = {"vda": RestoredDisk("/restore/vda.qcow2", "qcow2")}
    new = domain_xml_for_restore(HOSTILE_XML, "copy", restored, keep_host_devices=keep)
    return ET.fromstring(new.xml), new.dropped


def test_host_resources_are_dropped_and_named() -> None:
    domain, dropped = _hostile()
    assert dropped == HOSTILE_DROPPED
    text = ET.tostring(domain, encoding="unicode")
    host_things = ("/etc/", "/dev/s", "/dev/vda", "/dev/tpm", "/dev/dri", "/tmp/", "/run/", "10.0")
    for host_thing in host_things:
        assert host_thing not in text
    assert "commandline" not in text and "capabilities" not in text
    (vda,) = [d for d in domain.findall("devices/disk") if d.get("device") == "disk"]
    assert vda.find("source").attrib == {"file": "/restore/vda.qcow2"}  # type: ignore[union-attr]
    assert "rawio" not in vda.attrib
    assert domain.find("devices/emulator") is None
    assert domain.find("seclabel") is None and domain.find("os/nvram") is None
    assert domain.findtext("genid") == ""  # empty: libvirt makes a new one
    assert domain.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]


def test_the_guest_keeps_its_own_devices() -> None:
    domain, _dropped = _hostile()
    devices = domain.find("devices")
    assert devices is not None
    kept = [(d.tag, d.get("type") or d.get("model") or "") for d in devices]
    assert kept == [
        ("disk", "file"),
        ("disk", "file"),  # the empty cdrom drive
        ("interface", "network"),
        ("serial", "pty"),
        ("console", "pty"),
        ("channel", "unix"),  # the guest agent
        ("channel", "unix"),  # a virtio channel: kept, its host socket is not
        ("redirdev", "spicevmc"),
        ("input", "tablet"),
        ("graphics", "vnc"),
        ("graphics", "vnc"),  # its host socket dropped: on the host's default address
        ("rng", "virtio"),
        ("memballoon", "virtio"),
        ("video", ""),
        ("audio", "none"),
    ]
    agent = devices.find("channel/source")
    assert agent is not None and agent.attrib == {"mode": "bind"}  # libvirt places it
    interface = devices.find("interface")
    assert interface is not None and [c.tag for c in interface] == ["source"]
    assert devices.find("audio").attrib == {"id": "1", "type": "none"}  # type: ignore[union-attr]


def test_keep_host_devices_keeps_them_but_not_unrestored_disks() -> None:
    domain, dropped = _hostile(keep=True)
    assert dropped == (
        "disk vdb (block /dev/vda)",
        "disk vdc (network nbd://10.0.0.1:10809/x)",
        "disk sda (block /dev/sg0)",
        "disk vda (file /etc/shadow)",  # a second disk on the restored target
    )
    text = ET.tostring(domain, encoding="unicode")
    assert "/dev/sr0" in text and "passthrough" in text and "commandline" in text
    assert "/dev/vda" not in text and "10809" not in text and "/dev/sg0" not in text
    assert domain.find("uuid") is None  # still a new domain


def test_uefi_firmware_stays() -> None:
    xml = """<domain type='qemu'><name>u</name><os firmware='efi'>
      <type arch='x86_64' machine='q35'>hvm</type>
      <firmware><feature enabled='yes' name='secure-boot'/></firmware>
      <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
      <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/x.fd</nvram>
    </os><devices/></domain>"""
    new = domain_xml_for_restore(xml, "u2", {})
    domain = ET.fromstring(new.xml)
    assert new.dropped == ()
    assert domain.findtext("os/loader") == "/usr/share/OVMF/OVMF_CODE_4M.fd"
    assert domain.find("os").get("firmware") == "efi"  # type: ignore[union-attr]
    assert domain.find("os/firmware/feature") is not None
    assert domain.find("os/nvram") is None


@pytest.mark.parametrize(
    ("loader", "kept"),
    [
        ("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>", True),
        ("<loader type='rom'>/usr/share/seabios/bios.bin</loader>", True),
        ("<loader readonly='no' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>", False),
        ("<loader readonly='yes' type='pflash'>/usr/share/../../dev/sda</loader>", False),
        ("<loader readonly='yes' type='pflash'>/root/secret.fd</loader>", False),
    ],
)
def test_loader_only_from_system_firmware(loader: str, kept: bool) -> None:
    xml = f"<domain><name>u</name><os><type>hvm</type>{loader}</os></domain>"
    domain = ET.fromstring(domain_xml_for_restore(xml, "u2", {}).xml)
    assert (domain.find("os/loader") is not None) is kept


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "is empty"),
        ("a/b", "contains '/'"),
        ("a\nb", "control character"),
        ("a\x01b", "control character"),
        ("x" * 248, "longer than 247 bytes"),
    ],
)
def test_names_libvirt_refuses(name: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        check_domain_name(name)


@pytest.mark.parametrize("name", ["web1-copy", ".web", "123", "x" * 247, "ünïcode name"])
def test_names_libvirt_accepts(name: str) -> None:
    check_domain_name(name)


def test_host_files_named_by_a_restored_image() -> None:
    xml = """<domain><name>w</name><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
        <source file='/i/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
        <source file='/i/b.qcow2'/><target dev='vdb' bus='virtio'/></disk>
    </devices></domain>"""
    restored = {
        "vda": RestoredDisk("/r/vda.qcow2", "qcow2", ImageReferences(backing_file="/dev/sda")),
        "vdb": RestoredDisk("/r/vdb.qcow2", "qcow2", ImageReferences(data_file="/dev/sdb")),
    }
    new = domain_xml_for_restore(xml, "w2", restored)
    assert new.dropped == (
        "disk vda backing file /dev/sda",
        "disk vdb (its image's data file /dev/sdb)",
    )
    (vda,) = ET.fromstring(new.xml).findall("devices/disk")
    assert vda.find("source").get("file") == "/r/vda.qcow2"  # type: ignore[union-attr]
    assert vda.find("backingStore") is not None
    kept = domain_xml_for_restore(xml, "w2", restored, keep_host_devices=True)
    assert kept.dropped == ()
    disks = ET.fromstring(kept.xml).findall("devices/disk")
    assert len(disks) == 2 and all(d.find("backingStore") is None for d in disks)


@pytest.mark.parametrize(
    ("seclabel", "dropped"),
    [
        ("<seclabel type='dynamic' model='apparmor' relabel='yes'/>", ()),
        ("<seclabel type='dynamic' model='dac'/>", ()),
        (
            "<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>",
            ("seclabel static relabel=no",),
        ),
        (
            "<seclabel type='dynamic' model='selinux' relabel='no'/>",
            ("seclabel dynamic relabel=no",),
        ),
        ("<seclabel type='none'/>", ("seclabel none relabel=yes",)),
    ],
)
def test_only_libvirts_own_confinement_stays(seclabel: str, dropped: tuple[str, ...]) -> None:
    xml = f"<domain><name>s</name>{seclabel}<devices><x:y xmlns:x='urn:x'/></devices></domain>"
    new = domain_xml_for_restore(xml, "s2", {})
    assert new.dropped == (*dropped, "urn:x:y")
    assert (ET.fromstring(new.xml).find("seclabel") is None) is bool(dropped)


def test_the_warning_shows_no_terminal_controls() -> None:
    xml = """<domain><name>t</name><devices>
      <filesystem><source dir='/x\u009b31mred&#10;next'/></filesystem></devices></domain>"""
    restored = {"vda": RestoredDisk("/r", "qcow2", ImageReferences(backing_file="/b\x1b[2J"))}
    xml = xml.replace("</devices>", "<disk><target dev='vda'/></disk></devices>")
    assert domain_xml_for_restore(xml, "t2", restored).dropped == (
        "filesystem /x?31mred next",
        "disk vda backing file /b?[2J",
    )


@pytest.mark.parametrize("fmt", ["vmdk", "vdi", "vhdx", "vpc", "qed", "qcow", "VMDK"])
def test_formats_that_can_name_host_files_are_not_attached(fmt: str) -> None:
    disks = {"vda": RestoredDisk("/restore/vda.raw", "raw"), "vdb": RestoredDisk("/r/b", fmt)}
    new = domain_xml_for_restore(LIVE_XML, "copy", disks)
    targets = [d.find("target").get("dev") for d in ET.fromstring(new.xml).iter("disk")]  # type: ignore[union-attr]
    assert "vdb" not in targets and "vda" in targets
    assert (
        f"disk vdb (its {fmt} image can name other host files; only raw and qcow2 are attached)"
        in new.dropped
    )
    kept = domain_xml_for_restore(LIVE_XML, "copy", disks, keep_host_devices=True)
    assert "/r/b" in kept.xml and not any("vdb" in d for d in kept.dropped)


# Elements that stay, with parts that reach the host: each part goes and is named.
REACHING_XML = """<domain type='qemu'>
  <name>r</name>
  <memory unit='MiB'>64</memory>
  <blkiotune><weight>500</weight>
    <device><path>/dev/sda</path><weight>1000</weight></device></blkiotune>
  <resource><partition>/machine/host</partition></resource>
  <os><type arch='x86_64' machine='pc'>hvm</type><smbios mode='host'/></os>
  <launchSecurity type='tdx'><quoteGenerationService path='/run/qgs.sock'/></launchSecurity>
  <seclabel type='dynamic' model='selinux'><baselabel>unconfined_t</baselabel></seclabel>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/libvirt/images/r.qcow2'/>
      <encryption format='luks'>
        <secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/></encryption>
      <auth username='u'><secret type='ceph' usage='hostsecret'/></auth>
      <target dev='vda' bus='virtio'/><serial>S1</serial><boot order='1'/><readonly/>
    </disk>
    <disk type='file' device='cdrom'><source file='/srv/x.iso'/>
      <backingStore type='file'><source file='/etc/shadow'/></backingStore>
      <target dev='hdc' bus='ide'/></disk>
    <interface type='user'><source dev='eth0'/>
      <backend tap='/dev/net/tun' vhost='/dev/vhost-net'/>
      <portForward proto='tcp' address='0.0.0.0'><range start='22'/></portForward>
      <model type='virtio'/></interface>
    <graphics type='vnc' port='5999' autoport='no' listen='0.0.0.0'>
      <listen type='address' address='0.0.0.0'/></graphics>
    <graphics type='spice' port='-1' tlsPort='5901' autoport='no'>
      <listen type='socket' socket='/tmp/spice.sock'/></graphics>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/></graphics>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'>
      <encryption secret='6dd3e4a5-1d76-44ce-961f-f119f5aad935'/>
      <source type='file' path='/etc/tpm-state'/></backend></tpm>
  </devices>
</domain>
"""


def test_kept_elements_lose_what_reaches_the_host() -> None:
    restored = {"vda": RestoredDisk("/restore/vda.qcow2", "qcow2")}
    new = domain_xml_for_restore(REACHING_XML, "r2", restored)
    assert new.dropped == (
        "blkiotune device /dev/sda",
        "resource /machine/host",
        "os smbios host",
        "launchSecurity quoteGenerationService /run/qgs.sock",
        "seclabel baselabel unconfined_t",
        "disk vda encryption secret 0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f",
        "disk vda auth secret hostsecret",
        "cdrom hdc medium /srv/x.iso",
        "interface user source eth0",
        "interface backend /dev/net/tun /dev/vhost-net",
        "interface port forward 0.0.0.0 tcp",
        "graphics vnc port 5999, listen 0.0.0.0",
        "graphics spice tlsPort 5901, listen /tmp/spice.sock",
        "tpm encryption 6dd3e4a5-1d76-44ce-961f-f119f5aad935",
        "tpm source /etc/tpm-state",
    )
    domain = ET.fromstring(new.xml)
    text = ET.tostring(domain, encoding="unicode")
    for host_thing in (
        "/dev/sda",
        "/machine",
        'mode="host"',
        "/run/",
        "unconfined",
        "secret",
        "eth0",
        "/srv/",
        "/dev/net",
        "0.0.0.0",
        "5999",
        "5901",
        "/tmp/",
        "/etc/",
    ):
        assert host_thing not in text
    assert domain.findtext("blkiotune/weight") == "500"
    assert domain.find("seclabel").attrib == {"type": "dynamic", "model": "selinux"}  # type: ignore[union-attr]
    disk, cdrom = domain.findall("devices/disk")
    assert [c.tag for c in cdrom] == ["target"]
    assert [c.tag for c in disk] == [
        "driver",
        "source",
        "backingStore",
        "target",
        "serial",
        "boot",
        "readonly",
    ]
    assert disk.find("driver").attrib == {"name": "qemu", "type": "qcow2", "cache": "none"}  # type: ignore[union-attr]
    graphics = domain.findall("devices/graphics")
    assert [g.attrib for g in graphics] == [
        {"type": "vnc", "autoport": "yes"},
        {"type": "spice", "autoport": "yes"},
        {"type": "vnc", "autoport": "yes"},
    ]
    assert all(g.find("listen") is None for g in graphics)
    (interface,) = domain.findall("devices/interface")
    assert [c.tag for c in interface] == ["model"]
    assert domain.find("devices/tpm/backend").attrib == {"type": "emulator", "version": "2.0"}  # type: ignore[union-attr]
    assert list(domain.find("devices/tpm/backend")) == []  # type: ignore[arg-type]


def test_a_restored_network_disk_is_a_file_without_its_credentials() -> None:
    xml = """<domain type='qemu'><name>web1</name><devices>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/>
      <auth username='u'><secret type='iscsi' uuid='3c5b'/></auth>
      <source protocol='iscsi' name='iqn.x/1'><host name='10.0.0.2'/></source>
      <target dev='vda' bus='virtio'/></disk></devices></domain>"""
    restored = {"vda": RestoredDisk("/r/vda.raw", "raw")}
    for keep in (False, True):
        new = domain_xml_for_restore(xml, "copy", restored, keep_host_devices=keep)
        disk = ET.fromstring(new.xml).find("devices/disk")
        assert disk is not None and disk.get("type") == "file"
        assert disk.find("source").attrib == {"file": "/r/vda.raw"}  # type: ignore[union-attr]
        assert disk.find("auth") is None and "iqn" not in new.xml
