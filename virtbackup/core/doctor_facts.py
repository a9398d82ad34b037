"""What `virtbackup doctor` knows and says: the facts engine/health/doctor gathers about
the host and each domain, the settings the checks need, and the findings they produce.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from virtbackup.core.config import SnapshotSize
from virtbackup.core.model import DiskFacts
from virtbackup.core.planning import DomainPlan

MiB = 1024 * 1024


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    BLOCKER = "blocker"  # a backup fails until it is fixed: exit 1


class Subject(StrEnum):
    HOST = "host"
    DOMAIN = "domain"
    DISK = "disk"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    check: str  # stable id: libvirt, program, guestfs, dest, agent, discard, ...
    text: str
    fix: str | None = None
    domain: str | None = None
    disk: str | None = None  # target, e.g. vda

    @property
    def subject(self) -> Subject:
        if self.disk is not None:
            return Subject.DISK
        return Subject.DOMAIN if self.domain is not None else Subject.HOST


# -- facts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramFact:
    name: str
    path: str | None  # None: not installed
    package: str  # Debian package that has it


@dataclass(frozen=True)
class DestFacts:
    path: str
    problem: str | None = None  # why nothing can be written there
    free: int | None = None


@dataclass(frozen=True)
class OffsiteFacts:
    """Encryption and the offsite remote, when the configuration asks for them."""

    recipients_file: str | None = None
    recipients: int = 0  # keys in it
    encrypt_problem: str | None = None
    remote: str | None = None  # rclone location
    remote_problem: str | None = None
    # The repository on the remote, looked at when the remote answers:
    repository_version: int | None = None  # None: no repository there (yet)
    repository_secrets: int = 0  # encrypted secrets there
    repository_encrypted: bool = False  # it holds sealed chunks
    repository_problem: str | None = None  # its description cannot be read
    clock_offset: float | None = None  # seconds the remote's clock is ahead of ours
    clock_problem: str | None = None  # why it could not be measured
    sign_key: str | None = None  # the signing key, when backups are to be signed
    sign_problem: str | None = None  # why it cannot sign


@dataclass(frozen=True)
class HostFacts:
    uri: str
    libvirt_error: str | None = None  # None: the daemon answered
    programs: tuple[ProgramFact, ...] = ()
    guestfs_checked: bool = False
    guestfs_error: str | None = None  # when checked: None means the appliance booted
    dest: DestFacts | None = None  # None: no destination given
    lvm_checked: bool = False  # whether discovery can tell images on LVM (on_lv)
    offsite: OffsiteFacts = OffsiteFacts()


class AgentState(StrEnum):
    NO_CHANNEL = "no channel"
    NOT_RUNNING = "not running"  # the domain is not running: not checked
    DISCONNECTED = "disconnected"  # channel present, no agent on the other end
    SILENT = "silent"  # connected but it does not answer
    ANSWERING = "answering"


@dataclass(frozen=True)
class VolumeGroupFacts:
    """The LV under an image (or the disk itself) and its volume group."""

    vg: str
    lv: str
    lv_size: int
    vg_free: int
    extent_size: int  # bytes per extent: a snapshot is a whole number of them


@dataclass(frozen=True)
class DiskCheck:
    disk: DiskFacts
    backed_up: bool
    qcow2_compat: str | None = None  # "0.10" / "1.1" of a qcow2 image
    compat_error: str | None = None
    punch_holes: bool | None = None  # file images: None when not known
    punch_error: str | None = None
    overlay_free: int | None = None  # free bytes where its snapshot overlay would go
    volume_group: VolumeGroupFacts | None = None


@dataclass(frozen=True)
class DomainCheck:
    plan: DomainPlan
    agent: AgentState
    agent_detail: str | None = None
    disks: tuple[DiskCheck, ...] = ()
    xml_secrets: tuple[str, ...] = ()  # e.g. "vnc graphics password" (core/xml_secrets.py)


@dataclass(frozen=True)
class Settings:
    """What the configuration says that the checks need."""

    overlay_dir: str | None = None
    overlay_min_free: int = 512 * MiB
    snapshot_size: SnapshotSize = SnapshotSize(percent=10.0)
    # [domain."NAME"] snapshot_size overrides, by domain name
    snapshot_sizes: Mapping[str, SnapshotSize] = field(default_factory=dict)
    encrypted: bool = False  # `encrypt` is set: backups keep the XML's secrets sealed
    repository: bool = True  # backups go into the repository layout (incremental reads)

    def snapshot_size_of(self, domain: str) -> SnapshotSize:
        return self.snapshot_sizes.get(domain, self.snapshot_size)


DEFAULT_SETTINGS = Settings()
