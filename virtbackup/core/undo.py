"""What a run must undo, as plain data, and the pure decisions of how to undo it.

Before every state change of a domain (an overlay, a freeze, a shutdown) the engine
writes an undo record to a journal on disk (adapters/journal). The same records drive
the undo at the end of the run and, after a kill -9 or a power loss, `virtbackup clean`:
so every undo is decided from what is observed now (the live XML, the domain state,
the files), never from what the run believed, and running it twice is harmless.

The journal of one run and one domain is a JSON object:

    {"format": "virtbackup-journal", "version": 1,
     "run_id": "20240102T030405Z-1a2b3c", "pid": 1234, "created": "2024-01-02T03:04:05Z",
     "uri": "qemu:///system",
     "domain": {"uuid": "...", "name": "web1"},
     "records": [{"id": 1, "kind": "state", "was": "running", "restart": false},
                 {"id": 2, "kind": "overlay", "target": "vda",
                  "original": "/var/lib/libvirt/images/web1.qcow2",
                  "original_type": "file", "original_format": "qcow2",
                  "overlay": "/var/lib/libvirt/images/web1.qcow2.virtbackup-....qcow2"},
                 {"id": 3, "kind": "frozen"}]}

Records are undone newest first.
"""

import posixpath
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, ClassVar

from virtbackup.core.backup_job import SCRATCH_SUFFIX, SOCKET_DIR, SOCKET_SUFFIX, socket_path
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.lvm import (
    LVM_RECORD_TYPES,
    RUN_JOURNAL_UUID,
    SNAPSHOT_PREFIX,
    LvmSnapshotRecord,
    MountRecord,
    lvm_record_from_dict,
)
from virtbackup.core.model import DomainState
from virtbackup.core.overlays import OVERLAY_MARK

JOURNAL_FORMAT = "virtbackup-journal"
JOURNAL_VERSION = 1


class JournalError(VirtbackupError):
    """A journal file cannot be read: it is kept for a human to look at."""


@dataclass(frozen=True)
class OverlayRecord:
    """An external snapshot overlay on top of one disk: commit it back, pivot, delete it."""

    kind: ClassVar[str] = "overlay"
    target: str  # vda
    original: str  # the disk's source before the snapshot (file or block device)
    original_type: str  # file | block
    original_format: str  # the driver type before the snapshot: raw, qcow2, ...
    overlay: str  # the qcow2 overlay libvirt creates on top of `original`


@dataclass(frozen=True)
class FrozenRecord:
    """The guest's filesystems may be frozen through its agent: thaw them."""

    kind: ClassVar[str] = "frozen"


@dataclass(frozen=True)
class StateRecord:
    """The domain's run state before the run touched it: return it there."""

    kind: ClassVar[str] = "state"
    was: DomainState
    restart: bool  # start the domain again if it is found shut off (the shutdown method)


@dataclass(frozen=True)
class BackupJobRecord:
    """A pull backup job of libvirt's backup API (see core/backup_job): end it, then
    remove its scratch files and its socket."""

    kind: ClassVar[str] = "backup-job"
    socket: str
    scratch: tuple[str, ...]  # the scratch files, one per disk read


@dataclass(frozen=True)
class NbdServerRecord:
    """A qemu-nbd serving a shut-off domain's image on `socket`: end it, remove the
    socket."""

    kind: ClassVar[str] = "nbd-server"
    socket: str


@dataclass(frozen=True)
class InstantPullRecord:
    """A domain started by `restore --instant` on the qcow2 `overlay`, whose backing is
    the backup `backup`'s disk `target` served on `socket`: finish copying the backing
    data into the overlay (serving the backup again if the server died), then stop the
    server. Its "undo" finishes the restore: the domain keeps running."""

    kind: ClassVar[str] = "instant-pull"
    target: str
    overlay: str
    socket: str
    backup: str  # the backup directory served
    identity: str = ""  # the age identity of an encrypted backup, if any


def instant_socket_dir(domain_uuid: str) -> str:
    """Where `restore --instant` serves a new domain's disks: under qemu's own
    directory, which its user can reach."""
    return posixpath.join(str(SOCKET_DIR), f"virtbackup-instant-{domain_uuid}")


# The LVM method's records (core/lvm) carry their own fields() and describe().
UndoRecord = (
    OverlayRecord
    | FrozenRecord
    | StateRecord
    | BackupJobRecord
    | NbdServerRecord
    | InstantPullRecord
    | LvmSnapshotRecord
    | MountRecord
)


@dataclass(frozen=True)
class Entry:
    id: int
    record: UndoRecord


@dataclass(frozen=True)
class Journal:
    run_id: str
    pid: int
    created: str  # ISO 8601 UTC
    uri: str
    domain_uuid: str
    domain_name: str
    entries: tuple[Entry, ...] = field(default=())

    def add(self, record: UndoRecord) -> tuple["Journal", int]:
        next_id = max((e.id for e in self.entries), default=0) + 1
        return replace(self, entries=(*self.entries, Entry(next_id, record))), next_id

    def remove(self, entry_id: int) -> "Journal":
        return replace(self, entries=tuple(e for e in self.entries if e.id != entry_id))

    def undo_order(self) -> tuple[Entry, ...]:
        """Newest first: the reverse of the order the changes were made."""
        return tuple(reversed(self.entries))


# -- (de)serialisation ------------------------------------------------------------------


def record_to_dict(record: UndoRecord) -> dict[str, Any]:
    data: dict[str, Any] = {"kind": record.kind}
    if isinstance(record, OverlayRecord):
        data.update(
            target=record.target,
            original=record.original,
            original_type=record.original_type,
            original_format=record.original_format,
            overlay=record.overlay,
        )
    elif isinstance(record, StateRecord):
        data.update(was=record.was.value, restart=record.restart)
    elif isinstance(record, BackupJobRecord):
        data.update(socket=record.socket, scratch=list(record.scratch))
    elif isinstance(record, NbdServerRecord):
        data.update(socket=record.socket)
    elif isinstance(record, InstantPullRecord):
        data.update(asdict(record))
    elif isinstance(record, LVM_RECORD_TYPES):
        data.update(record.fields())
    return data


def record_from_dict(data: Mapping[str, Any]) -> UndoRecord:
    kind = data.get("kind")
    try:
        if kind == OverlayRecord.kind:
            return OverlayRecord(
                target=_text(data, "target"),
                original=_text(data, "original"),
                original_type=_text(data, "original_type"),
                original_format=_text(data, "original_format"),
                overlay=_text(data, "overlay"),
            )
        if kind == FrozenRecord.kind:
            return FrozenRecord()
        if kind == StateRecord.kind:
            restart = data.get("restart")
            if not isinstance(restart, bool):
                raise ValueError("'restart' must be true or false")
            return StateRecord(was=DomainState(_text(data, "was")), restart=restart)
        if kind == BackupJobRecord.kind:
            scratch = data.get("scratch")
            if not isinstance(scratch, list) or not all(
                isinstance(path, str) and path for path in scratch
            ):
                raise ValueError("'scratch' must be a list of paths")
            return BackupJobRecord(socket=_text(data, "socket"), scratch=tuple(scratch))
        if kind == NbdServerRecord.kind:
            return NbdServerRecord(socket=_text(data, "socket"))
        if kind == InstantPullRecord.kind:
            identity = data.get("identity", "")
            if not isinstance(identity, str):
                raise ValueError("'identity' must be a path or empty")
            return InstantPullRecord(
                target=_text(data, "target"),
                overlay=_text(data, "overlay"),
                socket=_text(data, "socket"),
                backup=_text(data, "backup"),
                identity=identity,
            )
        lvm_record = lvm_record_from_dict(data)
        if lvm_record is not None:
            return lvm_record
    except ValueError as err:
        raise JournalError(f"bad {kind} record: {err}") from None
    raise JournalError(f"unknown record kind {kind!r}")


def journal_to_dict(journal: Journal) -> dict[str, Any]:
    return {
        "format": JOURNAL_FORMAT,
        "version": JOURNAL_VERSION,
        "run_id": journal.run_id,
        "pid": journal.pid,
        "created": journal.created,
        "uri": journal.uri,
        "domain": {"uuid": journal.domain_uuid, "name": journal.domain_name},
        "records": [{"id": e.id, **record_to_dict(e.record)} for e in journal.entries],
    }


def journal_from_dict(data: Any) -> Journal:
    if not isinstance(data, dict) or data.get("format") != JOURNAL_FORMAT:
        raise JournalError("not a virtbackup journal")
    if data.get("version") != JOURNAL_VERSION:
        raise JournalError(f"journal version {data.get('version')!r} is not supported")
    domain = data.get("domain")
    records = data.get("records")
    if not isinstance(domain, dict) or not isinstance(records, list):
        raise JournalError("journal without domain or records")
    entries = []
    for raw in records:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), int):
            raise JournalError("journal record without an id")
        entries.append(Entry(raw["id"], record_from_dict(raw)))
    pid = data.get("pid")
    try:
        return Journal(
            run_id=_text(data, "run_id"),
            pid=pid if isinstance(pid, int) else 0,
            created=str(data.get("created", "")),
            uri=_text(data, "uri"),
            domain_uuid=_text(domain, "uuid"),
            domain_name=_text(domain, "name"),
            entries=tuple(entries),
        )
    except ValueError as err:
        raise JournalError(str(err)) from None


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} missing or not a string")
    return value


# -- is a journal ours? -------------------------------------------------------------------

# What new_run_id (engine/runs/session) makes, and the names a journal file gets.
RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
_UUID = re.compile(r"^[0-9a-fA-F-]{1,64}$")
_TARGET = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def journal_file_name(domain_uuid: str, run_id: str) -> str:
    return f"{domain_uuid}.{run_id}.json"


def foreign_journal(journal: "Journal", file_name: str) -> str | None:
    """Why a journal read from the state directory is not one a run of ours wrote (None:
    it is). `clean` acts as root on what a journal says, so a journal is trusted only as
    far as it describes what our runs create: an overlay named and placed as
    core/overlays names it (the run's id in its name), an LVM mount folder of one of our
    snapshots. A record that is not is never acted on."""
    run_wide = journal.domain_uuid == RUN_JOURNAL_UUID  # the LVM method's snapshots of a run
    if not RUN_ID.match(journal.run_id) or not (run_wide or _UUID.match(journal.domain_uuid)):
        return f"run id {journal.run_id!r} or domain uuid {journal.domain_uuid!r} is not ours"
    if file_name != journal_file_name(journal.domain_uuid, journal.run_id):
        return f"its name does not match its run {journal.run_id} and domain uuid"
    for entry in journal.entries:
        problem = foreign_record(entry.record, journal)
        if problem:
            return problem
    return None


def foreign_record(record: "UndoRecord", journal: "Journal") -> str | None:
    if isinstance(record, OverlayRecord):
        return _foreign_overlay(record, journal)
    if isinstance(record, BackupJobRecord):
        return _foreign_backup_job(record, journal)
    if isinstance(record, NbdServerRecord):
        return _foreign_nbd_server(record, journal)
    if isinstance(record, InstantPullRecord):
        return _foreign_instant_pull(record, journal)
    if isinstance(record, MountRecord):
        name = posixpath.basename(record.target)
        if not _is_clean_absolute(record.target) or not name.startswith(SNAPSHOT_PREFIX):
            return f"mount folder {record.target!r} is not one of our snapshots' folders"
    return None


def _foreign_overlay(record: OverlayRecord, journal: "Journal") -> str | None:
    overlay = record.overlay
    bad = f"overlay {overlay!r} is not named and placed as a run of ours names its overlays"
    if not _TARGET.match(record.target) or record.original_type not in ("file", "block"):
        return bad
    if not _is_clean_absolute(overlay) or not _is_clean_absolute(record.original):
        return bad
    suffix = f"{OVERLAY_MARK}{journal.run_id}.qcow2"
    next_to_image = record.original + suffix
    in_overlay_dir = f"{journal.domain_uuid}-{record.target}{suffix}"
    if overlay != next_to_image and posixpath.basename(overlay) != in_overlay_dir:
        return bad
    return None


def _foreign_backup_job(record: BackupJobRecord, journal: "Journal") -> str | None:
    socket = str(socket_path(journal.domain_uuid, journal.run_id))
    if record.socket != socket:
        return f"socket {record.socket!r} is not named and placed as a run of ours names it"
    suffix = f"{OVERLAY_MARK}{journal.run_id}{SCRATCH_SUFFIX}"
    for scratch in record.scratch:
        if not _is_clean_absolute(scratch) or not scratch.endswith(suffix):
            return f"scratch file {scratch!r} is not named as a run of ours names them"
    return None


def _foreign_nbd_server(record: NbdServerRecord, journal: "Journal") -> str | None:
    directory, name = posixpath.split(record.socket)
    prefix = f"{journal.domain_uuid}-"
    suffix = f"{OVERLAY_MARK}{journal.run_id}{SOCKET_SUFFIX}"
    target = name[len(prefix) : -len(suffix)]
    if (
        directory != str(SOCKET_DIR)
        or not name.startswith(prefix)
        or not name.endswith(suffix)
        or not _TARGET.match(target)
    ):
        return f"socket {record.socket!r} is not named and placed as a run of ours names it"
    return None


def _foreign_instant_pull(record: InstantPullRecord, journal: "Journal") -> str | None:
    socket = posixpath.join(instant_socket_dir(journal.domain_uuid), f"{record.target}.sock")
    if not _TARGET.match(record.target) or record.socket != socket:
        return f"socket {record.socket!r} is not named and placed as a run of ours names it"
    paths = [record.overlay, record.backup] + ([record.identity] if record.identity else [])
    if not all(_is_clean_absolute(path) for path in paths):
        return f"instant restore of {record.target}: its paths are not clean absolute paths"
    return None


def _is_clean_absolute(path: str) -> bool:
    return path.startswith("/") and posixpath.normpath(path) == path and "\0" not in path


# -- undo decisions -----------------------------------------------------------------------


class OverlayStep(StrEnum):
    FINISH_JOB = "finish-job"  # a commit job runs (the dead run's): wait until ready, pivot
    COMMIT_PIVOT = "commit-pivot"  # live: blockcommit --active --shallow, wait, pivot
    COMMIT_OFFLINE = "commit-offline"  # shut off: qemu-img commit the overlay into the original
    REDEFINE = "redefine"  # point the persistent definition back to the original
    DELETE = "delete-overlay"  # remove the overlay file, which nothing uses any more


@dataclass(frozen=True)
class DiskObservation:
    """What is true now about the disk an overlay record names."""

    domain_exists: bool
    active: bool = False
    live_source: str | None = None  # active domain: the disk's source in the live XML
    job: bool = False  # a block job runs on the disk
    config_source: str | None = None  # persistent domain: the source in its definition
    overlay_exists: bool = False


@dataclass(frozen=True)
class OverlayPlan:
    steps: tuple[OverlayStep, ...] = ()
    problem: str | None = None  # why nothing (more) can be done safely


def plan_overlay_undo(record: OverlayRecord, seen: DiskObservation) -> OverlayPlan:
    """How to bring one disk back to its original image and get rid of the overlay.

    The overlay is deleted only once no definition and no running qemu uses it: it may
    hold everything the guest wrote since the snapshot.
    """
    ours = {record.original, record.overlay}
    if not seen.domain_exists:
        if seen.overlay_exists:
            return OverlayPlan(
                problem=f"the domain is gone; overlay {record.overlay} is kept (it holds "
                f"writes made after the snapshot): merge it with "
                f"'qemu-img commit {record.overlay}' if still needed, then delete it"
            )
        return OverlayPlan()
    steps: list[OverlayStep] = []
    if seen.active:
        if seen.live_source not in ours:
            return OverlayPlan(problem=_foreign(record, seen.live_source))
        if seen.live_source == record.overlay:
            steps.append(OverlayStep.FINISH_JOB if seen.job else OverlayStep.COMMIT_PIVOT)
        elif seen.job:
            return OverlayPlan(
                problem=f"a block job runs on {record.target}, which is on its original "
                f"image: left alone; run 'virtbackup clean' again when it has ended"
            )
        # libvirt updates the definition when it pivots; older ones did not.
        if seen.config_source == record.overlay:
            steps.append(OverlayStep.REDEFINE)
    else:
        if seen.config_source not in ours:
            return OverlayPlan(problem=_foreign(record, seen.config_source))
        if seen.config_source == record.overlay:
            if not seen.overlay_exists:
                return OverlayPlan(
                    problem=f"the definition of {record.target} names overlay "
                    f"{record.overlay}, which is missing: fix the disk source by hand "
                    f"(virsh edit) to {record.original}"
                )
            steps += [OverlayStep.COMMIT_OFFLINE, OverlayStep.REDEFINE]
    if seen.overlay_exists:
        steps.append(OverlayStep.DELETE)
    return OverlayPlan(steps=tuple(steps))


def _foreign(record: OverlayRecord, source: str | None) -> str:
    return (
        f"disk {record.target} now uses {source or 'no image'}, neither its original "
        f"{record.original} nor our overlay: left alone, overlay {record.overlay} kept"
    )


class StateStep(StrEnum):
    RESUME = "resume"
    START = "start"
    START_PAUSED = "start-paused"


def plan_state_undo(record: StateRecord, now: DomainState | None) -> StateStep | None:
    """What returns the domain to the run state it had (None: nothing to do).

    A domain found shut off is started only when the run shut it down itself
    (`restart`): with the snapshot method a guest that powered itself off stays off.
    A paused domain the run found running was paused by qemu (an I/O error such as a
    full overlay filesystem) and is resumed once it is back on its original image.
    """
    if now is None:
        return None
    if record.was == DomainState.RUNNING:
        if now == DomainState.PAUSED:
            return StateStep.RESUME
        if now == DomainState.SHUTOFF and record.restart:
            return StateStep.START
    if record.was == DomainState.PAUSED and now == DomainState.SHUTOFF and record.restart:
        return StateStep.START_PAUSED
    return None


def describe(record: UndoRecord) -> str:
    """One line naming what a record stands for, for reports."""
    if isinstance(record, OverlayRecord):
        return f"overlay {record.overlay} on {record.target} ({record.original})"
    if isinstance(record, FrozenRecord):
        return "guest filesystems frozen"
    if isinstance(record, BackupJobRecord):
        return f"backup job serving on {record.socket}"
    if isinstance(record, NbdServerRecord):
        return f"qemu-nbd serving on {record.socket}"
    if isinstance(record, InstantPullRecord):
        return f"instant restore of {record.target} onto {record.overlay} from {record.backup}"
    if isinstance(record, LVM_RECORD_TYPES):
        return record.describe()
    return f"domain state {record.was.value}" + (" (restart)" if record.restart else "")
