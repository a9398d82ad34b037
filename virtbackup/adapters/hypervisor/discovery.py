"""Find the domains of a host and what their disks are: DomainFacts from libvirt.

Disks come from the live XML (core/diskxml). Sizes and backing chains come from
libvirt's block info while qemu holds the image open (a running or paused domain) and
from `qemu-img info` for offline images; on a remote connection the image paths are not
ours to open, so libvirt's block info is all there is. What cannot be found out about a
disk (a missing image, an inactive pool) is recorded in `probe_error`; it never stops
the discovery of the other disks and domains.
"""

import os
from dataclasses import replace
from typing import Any

from virtbackup.adapters.hypervisor.bindings import message
from virtbackup.adapters.hypervisor.domain import domain_state
from virtbackup.adapters.images import (
    UnreadableInfo,
    allocated_bytes,
    host_size,
    image_info,
    is_block_device,
)
from virtbackup.adapters.lvm import LvLookup
from virtbackup.core.agent_channel import has_agent_channel
from virtbackup.core.diskxml import parse_disks
from virtbackup.core.domain_caps import caps_query, offers_backup
from virtbackup.core.errors import CommandFailed
from virtbackup.core.model import DiskFacts, DomainFacts
from virtbackup.core.qcow2_refs import HEAD_BYTES, qcow2_references
from virtbackup.core.text import one_line

# Formats whose data qemu reads from the image's own file only (a qed, like a qcow2, may
# name a backing file: that is the backing chain). qcow2 and vmdk are checked image by
# image; any other format could keep data elsewhere and is not backed up.
SINGLE_FILE_FORMATS = frozenset({"raw", "iso", "vdi", "vpc", "vhdx", "luks", "qed"})


def domain_facts(libvirt: Any, conn: Any, dom: Any, *, local: bool) -> DomainFacts:
    """What virtbackup needs to know about one domain and each of its disks; `local`
    when its images are on this host. libvirt's errors pass through: the Hypervisor
    turns them into ours."""
    state = domain_state(libvirt, dom.state()[0])
    xml = dom.XMLDesc(0)
    live = dom.isActive() == 1
    disks = []
    lv_lookup = LvLookup()  # one `lvs` for all disks, run only when a disk needs it
    for disk in parse_disks(xml):
        disk = _resolve_volume(libvirt, conn, disk)
        if disk.probe_error is None and disk.path is not None:
            disk = _probe(libvirt, dom, disk, live=live, local=local)
            if local and disk.probe_error is None and disk.device == "disk":
                disk = _data_elsewhere(disk)
            if local and disk.device == "disk":
                disk = replace(
                    disk,
                    on_lv=lv_lookup.on_lv(disk.source_type, disk.path),
                    lv=lv_lookup.lv_name(disk.source_type, disk.path),
                )
        elif disk.probe_error is None and disk.network is not None and live:
            # qemu knows a network disk's size; the manifest records it for restore
            # --to-source to compare with the volume's
            disk = _probe(libvirt, dom, disk, live=live, local=local)
        disks.append(disk)
    return DomainFacts(
        name=dom.name(),
        uuid=dom.UUIDString(),
        state=state,
        persistent=dom.isPersistent() == 1,
        disks=tuple(disks),
        has_agent_channel=has_agent_channel(xml),
        offers_backup_api=_offers_backup_api(libvirt, conn, xml),
    )


def _offers_backup_api(libvirt: Any, conn: Any, xml: str) -> bool:
    """Whether libvirt offers the backup API for this domain. A connection that may not
    ask (a read-only one) cannot tell: then it is taken as offered, and a libvirt that
    lacks it fails the backup job in one line."""
    query = caps_query(xml)
    try:
        caps = conn.getDomainCapabilities(
            query.emulator, query.arch, query.machine, query.virttype, 0
        )
    except libvirt.libvirtError:
        return True
    return offers_backup(str(caps))


def _resolve_volume(libvirt: Any, conn: Any, disk: DiskFacts) -> DiskFacts:
    """A type='volume' disk gets the path of its volume, or a probe_error saying why not."""
    if disk.source_type != "volume" or disk.volume is None:
        return disk
    try:
        pool = conn.storagePoolLookupByName(disk.pool)
        if not pool.isActive():
            return replace(disk, probe_error=f"storage pool {disk.pool!r} is not active")
        path = pool.storageVolLookupByName(disk.volume).path()
    except libvirt.libvirtError as err:
        return replace(disk, probe_error=f"volume {disk.pool}/{disk.volume}: {message(err)}")
    return replace(disk, path=path)


def _probe(libvirt: Any, dom: Any, disk: DiskFacts, *, live: bool, local: bool) -> DiskFacts:
    """Sizes (and, offline, the backing chain) of a disk with a local path."""
    if local and not live:
        return _probe_qemu_img(disk)
    try:
        capacity, allocation, physical = dom.blockInfo(disk.target)
    except libvirt.libvirtError as err:
        if local:
            return _probe_qemu_img(disk)
        return replace(disk, probe_error=f"cannot inspect {disk.path}: {message(err)}")
    if local and disk.path is not None:
        # libvirt reports qemu's highest written offset; what the file holds on the host
        # is what a user compares with the backup, as qemu-img does offline.
        allocation = _host_allocation(disk.path, allocation)
    block = disk.source_type == "block" or (local and is_block_device(disk.path or ""))
    if not allocation and block:
        allocation = physical  # a block device occupies all of its size
    return replace(disk, virtual_size=capacity, allocated=allocation, physical=physical)


def _host_allocation(path: str, fallback: int) -> int:
    try:
        held = allocated_bytes(path)
    except OSError:
        return fallback
    return fallback if held is None else held


def _probe_qemu_img(disk: DiskFacts) -> DiskFacts:
    """qemu-img info of an image, shared with a qemu that may hold it (-U)."""
    if disk.path is None:
        return disk
    try:
        info = image_info(disk.path, disk.format, force_share=True, backing_chain=True)
    except CommandFailed as err:
        return replace(disk, probe_error=f"cannot inspect {disk.path}: {_last_line(err.stderr)}")
    except UnreadableInfo as err:
        return replace(disk, probe_error=str(err))
    allocated = info.actual_size
    physical = host_size(disk.path)
    if is_block_device(disk.path) and not allocated:
        allocated = physical  # a block device occupies all of its size
    return replace(
        disk,
        virtual_size=info.virtual_size,
        allocated=allocated,
        physical=physical,
        backing_chain=info.backing_chain or disk.backing_chain,
    )


def _data_elsewhere(disk: DiskFacts) -> DiskFacts:
    """The disk with `data_elsewhere` set when its image keeps data in other host files
    (copying the image file would then copy a header or a descriptor only)."""
    fmt = disk.format or "raw"
    if fmt in SINGLE_FILE_FORMATS or disk.path is None:
        return disk
    if fmt == "qcow2":
        return _qcow2_data_file(disk, disk.path)
    if fmt == "vmdk":
        return _vmdk_extents(disk, disk.path)
    return replace(
        disk,
        data_elsewhere=f"{fmt} images can keep data in other files, which is not checked: "
        "convert it to qcow2 or raw",
    )


def _qcow2_data_file(disk: DiskFacts, path: str) -> DiskFacts:
    try:
        # Non-blocking: a source that is a FIFO fails here instead of hanging discovery.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            head = os.pread(fd, HEAD_BYTES, 0)
        finally:
            os.close(fd)
    except OSError as err:
        return replace(disk, probe_error=f"cannot read {path}: {err.strerror}")
    data_file = qcow2_references(head).data_file
    if data_file is None:
        return disk
    named = f" ({one_line(data_file)})" if data_file else ""
    return replace(
        disk,
        data_elsewhere=f"its qcow2 image keeps its data in an external data file{named}: "
        "convert it to a qcow2 without one",
    )


def _vmdk_extents(disk: DiskFacts, path: str) -> DiskFacts:
    """A vmdk is backed up only when its one extent is the file itself (monolithicSparse);
    a descriptor naming extent files (FLAT, split, ...) is not."""
    try:
        names = image_info(path, "vmdk", force_share=True).extents
    except CommandFailed as err:
        return replace(disk, probe_error=f"cannot inspect {path}: {_last_line(err.stderr)}")
    except UnreadableInfo as err:
        return replace(disk, probe_error=str(err))
    own = os.path.realpath(path)
    elsewhere = [
        name for name in names if os.path.realpath(os.path.join(os.path.dirname(path), name)) != own
    ]
    if not elsewhere and names:
        return disk
    where = f"extent files ({one_line(', '.join(elsewhere))})" if elsewhere else "no extent"
    return replace(
        disk,
        data_elsewhere=f"its vmdk image keeps its data in {where}: convert it to qcow2 or raw",
    )


def _last_line(text: str) -> str:
    """The cause qemu-img gives, without the paths it repeats before it."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "qemu-img failed"
    # "qemu-img: Could not open 'P': Could not open 'P': No such file or directory"
    return lines[-1].rsplit(": ", 1)[-1]
