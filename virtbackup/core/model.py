"""What virtbackup knows about domains and disks: plain data, no I/O.

Discovery (adapters/libvirt) fills these from the live domain XML and block info; the
planner (core/planning) decides from them; the engine acts on the plan.
"""

from dataclasses import dataclass, field
from enum import StrEnum


class DomainState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shut off"
    BLOCKED = "blocked"
    SHUTDOWN = "in shutdown"
    CRASHED = "crashed"
    PMSUSPENDED = "pmsuspended"
    NOSTATE = "no state"


class Method(StrEnum):
    AUTO = "auto"
    SNAPSHOT = "snapshot"  # external disk-only libvirt snapshot, then blockcommit
    LVM = "lvm"  # LVM snapshot of the LV under the image
    SHUTDOWN = "shutdown"  # graceful shutdown, offline backup, restart
    OFFLINE = "offline"  # the domain is shut off: read its images directly
    BACKUP_API = "backup-api"  # libvirt's pull backup job (NBD), checkpoints: incremental


@dataclass(frozen=True)
class DiskFacts:
    target: str  # vda, sdb, hdc ...
    device: str  # disk, cdrom, floppy, lun
    source_type: str  # file, block, volume, network, dir, nvme, none
    path: str | None  # file or block device path (a volume resolved to its path)
    format: str | None  # driver type: raw, qcow2, ...
    readonly: bool = False
    shareable: bool = False
    backing_chain: tuple[str, ...] = ()  # backing files below `path`, top first
    virtual_size: int | None = None  # bytes the guest sees
    allocated: int | None = None  # bytes the image occupies on the host
    physical: int | None = None  # size of the file or device on the host
    # Added by discovery (issue 3); all optional so that other constructors keep working.
    on_lv: bool | None = None  # image on an LVM LV, or the disk is an LV; None: not checked
    lv: str | None = None  # that LV as vg/lv
    pool: str | None = None  # storage pool of a type='volume' disk
    volume: str | None = None  # volume name in that pool
    network: str | None = None  # a network source as protocol://host:port/name
    probe_error: str | None = None  # why the image could not be resolved or inspected
    discard: str | None = None  # driver discard: 'unmap' passes guest discards to the image
    # Why part of the image's data lives outside its file (a qcow2 external data file, a
    # vmdk extent), or why that cannot be ruled out: copying the file alone would miss it.
    data_elsewhere: str | None = None

    @property
    def location(self) -> str | None:
        """Where the disk's data is: its host path, or a network source's URL."""
        return self.path or self.network

    @property
    def tracks_changes(self) -> bool:
        """Whether qemu can keep persistent dirty bitmaps for it: only a qcow2 holds
        them, wherever it lives (a file, a block device, the network)."""
        return self.format == "qcow2"


@dataclass(frozen=True)
class DomainFacts:
    name: str
    uuid: str
    state: DomainState
    persistent: bool
    disks: tuple[DiskFacts, ...] = field(default=())
    has_agent_channel: bool = False  # an org.qemu.guest_agent.0 channel is configured
    offers_backup_api: bool = True  # libvirt's domain capabilities offer the backup API
