"""Keep a backed-up domain definition to the guest itself: what `restore --define` drops.

A backup's domain.xml is untrusted input. Defined as it is, it could hand the new domain
the host's block devices, directories, PCI/USB devices, sockets and files, or run host
programs (`<qemu:commandline>`). `keep_guest_only` edits the parsed XML in place by an
allow-list and returns one short description per thing it removed, for one warning.

Kept: everything that describes the virtual machine (name, memory, vcpus, cpu, clock,
features, tuning, events, metadata) and these devices:
- the restored disks (pointed at the restored files by core/restore_xml.py, which also
  cuts the backing file and drops a disk whose image names a data file, see
  core/qcow2_refs.py, or whose format is neither raw nor qcow2) and empty cdrom/floppy
  drives, with only what describes the guest's view (DISK_CHILDREN: driver, target,
  address, boot, readonly, serial, ...): a libvirt encryption secret or a login secret is
  the host's and goes, as do `rawio`/`sgio`. A cdrom or floppy with a medium keeps the
  drive but loses the medium (a host file);
- controllers, input devices without a host source, video, sound, watchdog, memballoon,
  panic, hub, iommu, vsock, crypto, redirfilter (none of these with a host render
  node), memory modules without a host file, a TPM emulated by swtpm (without a host
  secret or state location), rng reading /dev/urandom or /dev/random (or builtin);
- network interfaces of type network, bridge and user (without host scripts, tap
  devices, ROM files, port forwards or the host interface user networking binds to; MAC
  addresses are removed by the caller so libvirt makes new ones);
- serial, parallel, console and channel devices of type pty, null, vc, spicevmc,
  spiceport and qemu-vdagent; a unix channel to the guest (virtio, e.g. the guest agent)
  whose socket libvirt places itself;
- vnc and spice graphics without a render node, stripped of ports, listen addresses and
  sockets: libvirt picks a port on the host's default listen address (loopback unless
  the host's qemu.conf says otherwise); spicevmc USB redirection;
  audio backends none, spice and dbus (any other becomes `none`, so sound devices still
  find their backend);
- the firmware loader when it is read-only and lives under /usr/share (where
  distributions install OVMF, SeaBIOS and edk2), or chosen by `<os firmware='efi'>`;
  boot order, boot menu, emulated SMBIOS and BIOS settings;
- the block I/O weight (not per host device), a dynamic security label without its base
  label (libvirt chooses the label); launch security without host sockets.
CPU and NUMA pinning and cache tuning stay: they place the guest on the host's CPUs and
memory, they grant it nothing.
Dropped: any other disk, `<filesystem>`, `<hostdev>`, other interfaces (direct,
hostdev, ethernet, vhostuser, vdpa, sockets), other chardevs (file, dev, pipe, unix,
tcp, udp), chardev `<log>` files, smartcards other than spicevmc passthrough, redirdev
other than spicevmc, `<shmem>`, `<lease>`, `<pstore>`, TPM passthrough and external,
input passthrough, host-file memory, rng other backends, `<os>` kernel/initrd/dtb/
cmdline/acpi tables, the host's SMBIOS tables, sysinfo fw_cfg entries read from host
files, the cgroup partition (`<resource>`), static or relabel='no' security labels,
`<qemu:*>` and any other element this list does not know.
The emulator path is dropped silently: libvirt picks the host's own for the domain type.
"""

import xml.etree.ElementTree as ET
from collections.abc import Collection

from virtbackup.core.text import one_line

# Elements of <domain> that describe the virtual machine and refer to nothing on the host.
GUEST_ELEMENTS = frozenset(
    {
        "name",
        "uuid",
        "genid",
        "title",
        "description",
        "metadata",
        "maxMemory",
        "memory",
        "currentMemory",
        "memoryBacking",
        "memtune",
        "vcpu",
        "vcpus",
        "iothreads",
        "iothreadids",
        "cputune",
        "numatune",
        "features",
        "cpu",
        "clock",
        "on_poweroff",
        "on_reboot",
        "on_crash",
        "on_lockfailure",
        "pm",
        "perf",
        "keywrap",
        "launchSecurity",
    }
)
GUEST_OS_ELEMENTS = frozenset({"type", "boot", "bootmenu", "smbios", "bios", "firmware"})
# Devices kept as they are (no host path in their definition).
GUEST_DEVICES = frozenset(
    {
        "controller",
        "video",
        "sound",
        "watchdog",
        "memballoon",
        "panic",
        "hub",
        "iommu",
        "vsock",
        "crypto",
        "redirfilter",
    }
)
FIRMWARE_DIR = "/usr/share/"
GUEST_INTERFACES = frozenset({"network", "bridge", "user"})
GUEST_CHARDEVS = frozenset({"pty", "null", "vc", "spicevmc", "spiceport", "qemu-vdagent"})
GUEST_AUDIO = frozenset({"none", "spice", "dbus"})
GUEST_RNG_FILES = frozenset({"", "/dev/urandom", "/dev/random"})
# Where libvirt puts the sockets of channels it names itself (e.g. the guest agent's).
LIBVIRT_CHANNEL_DIR = "/var/lib/libvirt/qemu/channel/"
CHARDEV_TAGS = ("serial", "parallel", "console", "channel")
# Attributes that name a host file or socket.
HOST_PATH_KEYS = ("path", "file", "socket", "dir", "dev")
# What a restored disk or an empty drive keeps: the guest's view of it. Its source and
# backingStore are replaced by core/restore_xml.py.
DISK_CHILDREN = frozenset(
    {
        "driver",
        "source",
        "backingStore",
        "target",
        "address",
        "boot",
        "readonly",
        "shareable",
        "transient",
        "serial",
        "wwn",
        "vendor",
        "product",
        "blockio",
        "geometry",
        "iotune",
        "alias",
    }
)
# Host programs and devices an interface's script or backend names.
INTERFACE_HOST_KEYS = ("path", "tap", "vhost", "logFile")
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def keep_guest_only(domain: ET.Element, restored: Collection[str]) -> list[str]:
    """Remove what gives the domain host access; `restored` are the disk targets whose
    data the backup restores. Returns what was removed, one short phrase each."""
    dropped: list[str] = []
    for child in list(domain):
        dropped += _keep_element(domain, child, restored)
    return [one_line(phrase) for phrase in dropped]


def _keep_element(domain: ET.Element, child: ET.Element, restored: Collection[str]) -> list[str]:
    tag = child.tag
    if tag == "os":
        return _os(child)
    if tag == "devices":
        return _devices(child, restored)
    if tag == "sysinfo":
        return _sysinfo(child)
    if tag == "blkiotune":
        return _blkiotune(child)
    if tag == "seclabel" and _default_label(child):
        return _trim_seclabel(child)
    if tag in GUEST_ELEMENTS:
        return _host_paths(child) if tag != "metadata" else []
    domain.remove(child)
    if tag == "seclabel":
        return [f"seclabel {child.get('type', '')} relabel={child.get('relabel', 'yes')}"]
    if tag == "resource":
        return [f"resource {' '.join(_texts(child))}".strip()]
    return [_tag_name(tag)]


def _texts(element: ET.Element) -> list[str]:
    return [e.text.strip() for e in element.iter() if e.text and e.text.strip()]


def _blkiotune(blkiotune: ET.Element) -> list[str]:
    """The weight stays; per-device tuning names host block devices."""
    dropped = []
    for device in blkiotune.findall("device"):
        blkiotune.remove(device)
        dropped.append(f"blkiotune device {device.findtext('path', '').strip()}".strip())
    return dropped


def _trim_seclabel(seclabel: ET.Element) -> list[str]:
    """libvirt's own dynamic label: it picks the label; a base label chosen by the backup
    could be one sVirt does not confine."""
    dropped = []
    for child in list(seclabel):
        seclabel.remove(child)
        if child.tag == "baselabel":
            dropped.append(f"seclabel baselabel {(child.text or '').strip()}".strip())
    return dropped


def _host_paths(element: ET.Element) -> list[str]:
    """Take out of a kept element any part that names a host file or socket."""
    dropped = []
    for parent in list(element.iter()):
        for child in list(parent):
            where = next((child.get(k) for k in HOST_PATH_KEYS if child.get(k)), None)
            if where is not None:
                parent.remove(child)
                dropped.append(f"{element.tag} {child.tag} {where}")
    return dropped


def _tag_name(tag: str) -> str:
    """`{http://libvirt.org/schemas/domain/qemu/1.0}commandline` -> `qemu:commandline`."""
    if tag.startswith("{"):
        uri, _, local = tag[1:].partition("}")
        parts = uri.rstrip("/").split("/")
        prefix = parts[-2] if len(parts) > 3 else uri
        return f"{prefix}:{local}"
    return tag


def _default_label(seclabel: ET.Element) -> bool:
    return seclabel.get("type", "dynamic") == "dynamic" and seclabel.get("relabel") != "no"


def _os(os_element: ET.Element) -> list[str]:
    dropped = []
    for child in list(os_element):
        if child.tag == "smbios" and child.get("mode") == "host":
            os_element.remove(child)  # the host's own SMBIOS tables
            dropped.append("os smbios host")
            continue
        if child.tag in GUEST_OS_ELEMENTS:
            continue
        if child.tag == "nvram":
            # Per domain; libvirt makes a fresh one from the firmware's own template.
            os_element.remove(child)
            continue
        if child.tag == "loader" and _system_firmware(child):
            continue
        os_element.remove(child)
        text = (child.text or "").strip()
        dropped.append(f"os {child.tag} {text}".strip())
    return dropped


def _system_firmware(loader: ET.Element) -> bool:
    path = (loader.text or "").strip()
    read_only = loader.get("readonly") == "yes" or loader.get("type") == "rom"
    return not path or (read_only and path.startswith(FIRMWARE_DIR) and "/../" not in path)


def _sysinfo(sysinfo: ET.Element) -> list[str]:
    dropped = []
    for entry in sysinfo.iter():
        for child in list(entry):
            if child.get("file") is not None:
                entry.remove(child)
                dropped.append(f"sysinfo entry from {child.get('file')}")
    return dropped


def _devices(devices: ET.Element, restored: Collection[str]) -> list[str]:
    dropped = []
    seen: set[str] = set()
    for device in list(devices):
        if device.tag == "emulator":
            devices.remove(device)
            continue
        problem = _device_problem(device, restored, seen)
        if problem is not None:
            devices.remove(device)
            dropped.append(problem)
        else:
            dropped += _trim_device(device)
    return dropped


def _device_problem(device: ET.Element, restored: Collection[str], seen: set[str]) -> str | None:
    """Why the device goes (a phrase for the warning), or None when it stays."""
    tag, kind = device.tag, device.get("type", "")
    if tag == "disk":
        return _disk_problem(device, restored, seen)
    if tag in GUEST_DEVICES:
        render = [e.get("rendernode") for e in device.iter() if e.get("rendernode")]
        return f"{tag} rendernode {render[0]}" if render else None
    if tag == "interface":
        return None if kind in GUEST_INTERFACES else f"interface {kind}".strip()
    if tag in CHARDEV_TAGS:
        return _chardev_problem(device)
    if tag == "graphics":
        on_gpu = any(e.get("rendernode") for e in device.iter())
        return None if kind in ("vnc", "spice") and not on_gpu else f"graphics {kind}"
    if tag == "redirdev":
        return None if kind == "spicevmc" else f"redirdev {kind}"
    if tag == "smartcard":
        keep = device.get("mode") == "passthrough" and kind == "spicevmc"
        return None if keep else f"smartcard {device.get('mode', '')}".strip()
    if tag == "input":
        return None if device.find("source") is None else f"input {kind} {_source_text(device)}"
    if tag == "audio":
        return None
    if tag == "tpm":
        backend = device.find("backend")
        backend_type = backend.get("type", "") if backend is not None else ""
        return None if backend_type == "emulator" else f"tpm {backend_type}".strip()
    if tag == "rng":
        backend = device.find("backend")
        if backend is not None and backend.get("model") == "builtin":
            return None
        if backend is not None and backend.get("model") == "random":
            path = (backend.text or "").strip()
            return None if path in GUEST_RNG_FILES else f"rng {path}"
        return "rng " + (backend.get("model", "") if backend is not None else "")
    if tag == "memory":
        has_file = device.find("source/path") is not None
        return f"memory {device.get('model', '')} {_source_text(device)}" if has_file else None
    return f"{_tag_name(tag)} {_source_text(device)}".strip()


def _disk_problem(disk: ET.Element, restored: Collection[str], seen: set[str]) -> str | None:
    target = disk.find("target")
    dev = target.get("dev", "") if target is not None else ""
    device = disk.get("device", "disk")
    if dev in restored and dev not in seen:
        seen.add(dev)
        return None
    if device in ("cdrom", "floppy"):
        if dev in seen:
            return f"disk {dev} (a second drive {dev})"
        seen.add(dev)
        return None  # the drive stays; _trim_device takes out the medium
    where = _source_text(disk)
    return f"disk {dev} ({disk.get('type', '')} {where})".replace(" )", ")")


def _chardev_problem(device: ET.Element) -> str | None:
    kind = device.get("type", "pty")
    if kind in GUEST_CHARDEVS:
        return None
    target = device.find("target")
    if kind == "unix" and device.tag == "channel" and target is not None:
        if target.get("type") == "virtio":
            return None  # _trim_device lets libvirt place the socket
    return f"{device.tag} {kind} {_source_text(device)}".strip()


def _source_text(device: ET.Element) -> str:
    """The host thing a device names, for the warning: a path, device or address."""
    for source in device.iter("source"):
        if source.get("protocol"):
            host = source.find("host")
            where = f"{host.get('name', '')}:{host.get('port', '')}" if host is not None else ""
            return f"{source.get('protocol')}://{where}/{source.get('name', '')}"
        for key in ("file", "dev", "dir", "path", "name", "evdev", "socket"):
            if source.get(key):
                return str(source.get(key))
    for key in ("path", "file"):
        element = device.find(key)
        if element is not None and element.text:
            return element.text.strip()
    return ""


def _trim_device(device: ET.Element) -> list[str]:
    """Take host references out of a device that stays."""
    dropped = []
    if device.tag == "disk":
        for key in ("rawio", "sgio"):
            device.attrib.pop(key, None)
        dropped += _trim_disk(device)
        if device.get("device") in ("cdrom", "floppy"):
            for backing in device.findall("backingStore"):
                device.remove(backing)  # the medium's, and it goes
        if device.get("device") in ("cdrom", "floppy") and device.find("source") is not None:
            device.set("type", "file")  # an empty drive of any kind is a file drive
            for source in device.findall("source"):
                device.remove(source)
                target = device.find("target")
                dev = target.get("dev", "") if target is not None else ""
                dropped.append(f"{device.get('device')} {dev} medium {_source_text_of(source)}")
    if device.tag in CHARDEV_TAGS:
        for log in device.findall("log"):
            device.remove(log)
            dropped.append(f"{device.tag} log {log.get('file', '')}".strip())
        if device.get("type") == "unix":
            for source in device.findall("source"):
                device.remove(source)
                path = source.get("path", "")
                if path and not path.startswith(LIBVIRT_CHANNEL_DIR):
                    dropped.append(f"channel socket {path}")
            ET.SubElement(device, "source", {"mode": "bind"})
    if device.tag == "interface":
        for child in list(device):
            if child.tag in ("script", "downscript", "backend", "target"):
                device.remove(child)
                paths = [v for k, v in child.attrib.items() if k in INTERFACE_HOST_KEYS]
                if child.tag != "target" and paths:
                    dropped.append(f"interface {child.tag} {' '.join(paths)}")
            elif child.tag == "rom" and child.get("file"):
                device.remove(child)
                dropped.append(f"interface rom {child.get('file')}")
            elif child.tag == "portForward":
                device.remove(child)
                address = child.get("address", "")
                dropped.append(f"interface port forward {address} {child.get('proto', '')}")
            elif child.tag == "source" and device.get("type") == "user":
                device.remove(child)  # the host interface user networking binds to
                dropped.append(f"interface user source {child.get('dev', '')}".strip())
    if device.tag == "graphics":
        dropped += _trim_graphics(device)
    if device.tag == "tpm":
        for backend in device.findall("backend"):
            for child in list(backend):
                if child.tag in ("encryption", "source"):
                    backend.remove(child)
                    where = child.get("secret") or child.get("path") or ""
                    dropped.append(f"tpm {child.tag} {where}".strip())
    if device.tag == "audio" and device.get("type", "none") not in GUEST_AUDIO:
        dropped.append(f"audio {device.get('type')}")
        audio_id = device.get("id")
        device.attrib.clear()
        for child in list(device):
            device.remove(child)
        if audio_id is not None:
            device.set("id", audio_id)
        device.set("type", "none")
    return dropped


def _trim_disk(disk: ET.Element) -> list[str]:
    """Keep the guest's view of a disk; take out host secrets (of a libvirt-encrypted image
    or a network disk's login) and anything else this list does not know."""
    target = disk.find("target")
    dev = target.get("dev", "") if target is not None else ""
    dropped = []
    for child in list(disk):
        if child.tag in DISK_CHILDREN:
            continue
        disk.remove(child)
        secrets = [s.get("uuid") or s.get("usage") or "" for s in child.iter("secret")]
        named = f" secret {', '.join(secrets)}" if secrets else ""
        dropped.append(f"disk {dev} {_tag_name(child.tag)}{named}")
    return dropped


def _trim_graphics(graphics: ET.Element) -> list[str]:
    """A console on the host's default listen address (loopback unless the host's qemu.conf
    says otherwise) and a port libvirt picks: a backup's console password may be gone."""
    named = []
    for key in ("port", "tlsPort", "websocket", "listen", "socket"):
        value = graphics.attrib.pop(key, None)
        if value and value != "-1" and value not in LOOPBACK:
            named.append(f"{key} {value}")
    for listen in graphics.findall("listen"):
        kind = listen.get("type", "address")
        if kind == "none":
            continue
        graphics.remove(listen)
        where = listen.get("address") or listen.get("network") or listen.get("socket") or ""
        if where and where not in LOOPBACK and f"listen {where}" not in named:
            named.append(f"listen {where}")
    graphics.set("autoport", "yes")
    kind = graphics.get("type", "")
    return [f"graphics {kind} {', '.join(named)}"] if named else []


def drop_unrestored_disks(domain: ET.Element, restored: Collection[str]) -> list[str]:
    """Even a domain kept as it is never gets the original's disks the backup did not
    restore (left out, excluded, or a second disk on a restored target)."""
    dropped: list[str] = []
    seen: set[str] = set()
    for devices in domain.findall("devices"):
        for disk in devices.findall("disk"):
            problem = _disk_problem(disk, restored, seen)
            if problem is not None:
                devices.remove(disk)
                dropped.append(problem)
    return [one_line(phrase) for phrase in dropped]


def _source_text_of(source: ET.Element) -> str:
    return next((str(v) for k, v in source.attrib.items() if k in ("file", "dev", "name")), "")
