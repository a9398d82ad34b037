"""Which domains, which method, which disks, and why: pure decisions from facts.

`plan_domain` turns what discovery found (DomainFacts) and what the user asked
(PlanOptions) into a DomainPlan: the method per domain and, per disk, whether it is
backed up, each with a reason a user can read. `select_domains` resolves the names and
globs of the command line against the domains of the host.

Methods under `auto`:
- shut off: `offline`, the images are read directly.
- running (or blocked): `backup-api` when a disk is on the network (only qemu can read
  it), or, when the backup API is wanted (the repository layout), when every disk is a
  qcow2 (its changes are tracked) or a disk is a block device not on LVM; else `lvm` when
  every disk to back up is known to live on LVM, else `snapshot` (an external disk-only
  snapshot takes the writes during the copy).
- paused: the same; the domain stays paused.
- pmsuspended (suspended to RAM by the guest): `snapshot`; qemu keeps its disks open.
- in shutdown, crashed, no state: not backed up. A snapshot of a domain that is about
  to stop could be stranded; a crashed guest's disks are in an unknown state.
`shutdown` is never chosen by `auto`: it takes the service down.

Network disks are read only through qemu, from libvirt's backup job of a running or
paused domain: under any other method (a shut-off domain included) they are left out,
with the reason.

Nothing is left out silently: a disk whose data cannot be backed up (network under a
method that cannot read it, SCSI passthrough, an unsupported source type, an image
whose data lives in other files) is
`left_out` unless the configuration excludes it by target (`exclude_disks`); the engine
then reports the domain's backup incomplete. A disk whose image cannot be read now is
`unreadable`: the domain's backup fails (unless the disk is excluded).
Removable media and drives without a medium hold no data of the domain and are skipped.
"""

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from virtbackup.core.errors import UsageError
from virtbackup.core.model import DiskFacts, DomainFacts, DomainState, Method

# States in which qemu runs and holds the disks open.
LIVE_STATES = frozenset(
    {DomainState.RUNNING, DomainState.BLOCKED, DomainState.PAUSED, DomainState.PMSUSPENDED}
)
# States in which libvirt's backup API serves a domain's disks.
BACKUP_API_STATES = frozenset({DomainState.RUNNING, DomainState.BLOCKED, DomainState.PAUSED})
# States in which the guest still handles an ACPI power button press.
SHUTDOWN_STATES = frozenset({DomainState.RUNNING, DomainState.BLOCKED})
# Source types whose data sits in a local file or block device we can read.
LOCAL_SOURCES = frozenset({"file", "block", "volume"})
# How similar (difflib ratio) a name must be to be suggested for an unknown one.
CLOSE_MATCH_CUTOFF = 0.6
EXCLUDED_REASON = "excluded by configuration"
NO_DISK_REASON = "no disk to back up"


@dataclass(frozen=True)
class PlanOptions:
    method: Method = Method.AUTO
    exclude_disks: tuple[str, ...] = ()  # targets left out by configuration or option
    # auto may choose the backup API (its incremental reads need the repository layout)
    backup_api: bool = False


@dataclass(frozen=True)
class DiskPlan:
    disk: DiskFacts
    backup: bool
    reason: str
    warning: bool = False  # the user should look: a risk, or a disk that cannot be read
    # data the backup misses: a disk that cannot be backed up and is not excluded by name
    left_out: bool = False
    # a disk whose image cannot be read now (gone, its pool inactive): the domain's backup
    # fails rather than miss it, and the next run tries again
    unreadable: bool = False
    excluded: bool = False  # left out by target in the configuration (exclude_disks)


@dataclass(frozen=True)
class DomainPlan:
    domain: DomainFacts
    method: Method | None  # None: the domain is not backed up, `reason` says why
    reason: str
    disks: tuple[DiskPlan, ...]

    @property
    def backed_up(self) -> tuple[DiskPlan, ...]:
        return tuple(d for d in self.disks if d.backup)

    @property
    def warnings(self) -> tuple[DiskPlan, ...]:
        return tuple(d for d in self.disks if d.warning)

    @property
    def excluded(self) -> tuple[DiskPlan, ...]:
        return tuple(d for d in self.disks if d.excluded)

    @property
    def nothing_but_left_out(self) -> bool:
        """No disk can be backed up and some hold data the backup would miss: the
        domain's backup is incomplete, not merely skipped."""
        return self.method is None and self.reason == NO_DISK_REASON and bool(self.left_out)

    @property
    def unreadable(self) -> tuple[DiskPlan, ...]:
        return tuple(d for d in self.disks if d.unreadable)

    @property
    def left_out(self) -> tuple[DiskPlan, ...]:
        """Disks whose data the backup misses: the domain's backup is incomplete."""
        return tuple(d for d in self.disks if d.left_out)


class UnknownDomain(UsageError):
    """A domain named on the command line does not exist on the host."""


# -- disks -------------------------------------------------------------------------------


def disk_verdict(disk: DiskFacts) -> DiskPlan:
    """Whether a disk can be backed up at all, whatever the method."""
    if disk.device in ("cdrom", "floppy"):
        return DiskPlan(disk, False, f"removable media ({disk.device})")
    if disk.device == "lun":
        return DiskPlan(
            disk,
            False,
            "SCSI passthrough (lun): the guest drives the device itself, "
            "back it up on the storage side",
            left_out=True,
        )
    if disk.source_type not in LOCAL_SOURCES and disk.source_type != "network":
        return DiskPlan(
            disk, False, f"{disk.source_type} disks are not supported", warning=True, left_out=True
        )
    if disk.probe_error is not None:
        return DiskPlan(disk, False, disk.probe_error, warning=True, unreadable=True)
    if disk.location is None:
        return DiskPlan(disk, False, "no source: nothing to back up")
    if disk.data_elsewhere is not None:
        return DiskPlan(disk, False, disk.data_elsewhere, warning=True, left_out=True)
    if disk.shareable:
        return DiskPlan(
            disk,
            True,
            "shareable: other domains may write it, consistency cannot be guaranteed",
            warning=True,
        )
    if disk.readonly:
        return DiskPlan(disk, True, "read-only for the guest: copied as it is")
    return DiskPlan(disk, True, "")


_HOW = {
    Method.OFFLINE: "read directly, the domain is shut off",
    Method.SNAPSHOT: "copied while an external snapshot takes the writes",
    Method.LVM: "copied from an LVM snapshot",
    Method.SHUTDOWN: "read while the domain is shut down",
}


def _how(method: Method, disk: DiskFacts) -> str:
    if method is not Method.BACKUP_API:
        return _HOW[method]
    how = "read over NBD from libvirt's backup job"
    if disk.source_type == "network":
        how = f"network disk ({disk.network}), {how} (qemu reads the network source)"
    if disk.tracks_changes:
        return f"{how}: only what changed since the last backup"
    return (
        f"{how}: in full each time, {disk.format or 'raw'} keeps no change bitmaps "
        "(the repository stores only new chunks)"
    )


def _network_left_out(disk: DiskFacts, facts: DomainFacts) -> DiskPlan:
    """A network disk under a method that cannot read it: qemu reads it for the backup
    API only (reading it on the host would need the storage's tools and credentials)."""
    state = facts.state
    if state is DomainState.SHUTOFF:
        why = "start the domain to back it up (or back the volume up on the storage side)"
    elif not facts.offers_backup_api:
        why = f"{backup_api_problem(facts)}; back the volume up on the storage side"
    elif state in BACKUP_API_STATES:
        why = "use --method backup-api (or auto)"
    else:
        why = f"it is {state}: the backup API needs a running or paused domain"
    reason = f"network disk ({disk.network}): read through the running domain's qemu only; {why}"
    return DiskPlan(disk, False, reason, warning=True, left_out=True)


def _finish_disk(verdict: DiskPlan, method: Method | None, facts: DomainFacts) -> DiskPlan:
    if not verdict.backup:
        return verdict
    if method is None:
        return DiskPlan(verdict.disk, False, "the domain is not backed up", verdict.warning)
    if verdict.disk.source_type == "network" and method is not Method.BACKUP_API:
        return _network_left_out(verdict.disk, facts)
    if verdict.reason:
        return verdict
    return DiskPlan(verdict.disk, True, _how(method, verdict.disk))


# -- domains -----------------------------------------------------------------------------


def plan_domain(facts: DomainFacts, options: PlanOptions | None = None) -> DomainPlan:
    """The method for one domain and the fate of each of its disks, with reasons."""
    options = options or PlanOptions()
    verdicts = [
        DiskPlan(disk, False, EXCLUDED_REASON, excluded=True)
        if disk.target in options.exclude_disks
        else disk_verdict(disk)
        for disk in facts.disks
    ]
    wanted = [v.disk for v in verdicts if v.backup]
    if not wanted:
        why = "no disks" if not facts.disks else NO_DISK_REASON
        method, reason = None, why
    elif options.method is Method.AUTO:
        method, reason = _auto(facts, wanted, options.backup_api)
    else:
        method, reason = _asked(facts, wanted, options.method)
    disks = tuple(_finish_disk(v, method, facts) for v in verdicts)
    if method is not None and not any(d.backup for d in disks):
        method, reason = None, NO_DISK_REASON  # its only disks are on the network
    return DomainPlan(facts, method, reason, disks)


def _all_on_lv(disks: Sequence[DiskFacts]) -> bool:
    return all(d.on_lv is True for d in disks)


def backup_api_problem(facts: DomainFacts) -> str | None:
    """Why libvirt's backup API cannot serve the domain's disks (None: it can): qemu must
    run it. It serves any disk qemu has open, whatever the storage behind it."""
    if not facts.offers_backup_api:
        return (
            "libvirt here does not offer the backup API for it (its domain capabilities "
            "lack <backup supported='yes'/>: libvirt or qemu too old)"
        )
    if facts.state not in BACKUP_API_STATES:
        return f"it is {facts.state}; the backup API needs a running or paused domain"
    return None


def untracked_note(disks: Sequence[DiskFacts]) -> str:
    """Which disks are read in full each time (no persistent bitmaps), and how to change
    that; empty when every disk's changes are tracked."""
    others = [d.target for d in disks if not d.tracks_changes]
    if not others:
        return ""
    return f"{', '.join(others)} not a qcow2 file (convert to qcow2 for incremental reads)"


def _auto(
    facts: DomainFacts, disks: Sequence[DiskFacts], backup_api: bool
) -> tuple[Method | None, str]:
    state = facts.state
    if state is DomainState.SHUTOFF:
        return Method.OFFLINE, "auto: shut off, the images are read directly"
    if state in LIVE_STATES:
        stays = {
            DomainState.PAUSED: "; it stays paused",
            DomainState.PMSUSPENDED: "; it stays suspended",
        }.get(state, "")
        chosen = _auto_backup_api(facts, disks, backup_api)
        if chosen is not None:
            return Method.BACKUP_API, f"auto: {state}, {chosen}{stays}"
        # with the repository, say what would give incremental reads
        problem = untracked_note(disks) if backup_api else ""
        no_changes = f"; everything is read: {problem}" if problem else ""
        if _all_on_lv(disks):
            return Method.LVM, (
                f"auto: {state}, every disk is on LVM: LVM snapshots{stays}{no_changes}"
            )
        return Method.SNAPSHOT, (
            f"auto: {state}, an external snapshot takes the writes{stays}{no_changes}"
        )
    if state is DomainState.SHUTDOWN:
        return None, (
            "in shutdown: a snapshot could be stranded when it stops; run again when it is shut off"
        )
    if state is DomainState.CRASHED:
        return None, (
            "crashed: its disks are in an unknown state; destroy or restart it, "
            "or ask for --method snapshot"
        )
    return None, f"{state}: libvirt does not say whether it runs"


def _auto_backup_api(
    facts: DomainFacts, disks: Sequence[DiskFacts], backup_api: bool
) -> str | None:
    """Why auto takes the backup API for a live domain (None: it does not)."""
    if backup_api_problem(facts) is not None:
        return None
    untracked = untracked_note(disks)
    in_full = f"; read in full: {untracked}" if untracked else ""
    network = [d.target for d in disks if d.source_type == "network"]
    if network:
        return (
            f"{', '.join(network)} on the network: libvirt's backup API, qemu reads "
            f"every disk{in_full}"
        )
    if not backup_api:
        return None
    if not untracked:
        return (
            "every disk is a qcow2: libvirt's backup API, "
            "only what changed since the last backup is read"
        )
    block = [d.target for d in disks if d.source_type == "block"]
    if block and not _all_on_lv(disks):
        return f"{', '.join(block)} a block device: libvirt's backup API, no overlay{in_full}"
    return None


def _asked(
    facts: DomainFacts, disks: Sequence[DiskFacts], method: Method
) -> tuple[Method | None, str]:
    state = facts.state
    if state is DomainState.SHUTOFF:
        # Whatever was asked, a shut-off domain needs nothing but a direct read.
        if method is Method.OFFLINE:
            return Method.OFFLINE, "offline: shut off, the images are read directly"
        return Method.OFFLINE, f"{method} asked, but it is shut off: the images are read directly"
    live = state in LIVE_STATES or state is DomainState.CRASHED
    if method is Method.OFFLINE:
        return None, f"offline needs a shut-off domain, it is {state}: use snapshot or shutdown"
    if not live:
        return None, f"{state}: {method} needs a running or paused domain"
    if method is Method.SNAPSHOT:
        return Method.SNAPSHOT, f"snapshot: {state}, an external snapshot takes the writes"
    if method is Method.BACKUP_API:
        problem = backup_api_problem(facts)
        if problem:
            return None, f"backup-api asked, but {problem}"
        untracked = untracked_note(disks)
        in_full = f"; read in full: {untracked}" if untracked else ""
        return Method.BACKUP_API, f"backup-api: {state}, read over NBD from a backup job{in_full}"
    if method is Method.LVM:
        not_on_lv = [d.target for d in disks if d.on_lv is False]
        if not_on_lv:
            return None, f"lvm asked, but {', '.join(not_on_lv)} not on LVM"
        if _all_on_lv(disks):
            return Method.LVM, f"lvm: {state}, every disk is on LVM"
        return Method.LVM, f"lvm: {state}; whether each disk is on LVM is checked at backup"
    # Method.SHUTDOWN
    if not facts.persistent:
        return None, "shutdown asked, but the domain is transient: it would vanish"
    if state not in SHUTDOWN_STATES:
        return None, f"shutdown asked, but it is {state}: it cannot react to a shutdown request"
    return Method.SHUTDOWN, "shutdown: shut down, read directly, started again"


# -- selection ---------------------------------------------------------------------------


def select_domains(
    available: Sequence[str],
    names: Sequence[str] = (),
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[str]:
    """The domains to work on: the named ones (all when none is named) matching an
    `include` glob (when any is given) and no `exclude` glob.

    Raises UnknownDomain naming every unknown name with its closest matches.
    """
    known = set(available)
    unknown = [name for name in dict.fromkeys(names) if name not in known]
    if unknown:
        raise UnknownDomain(
            "; ".join(_unknown_message(name, available) for name in unknown),
            "'virtbackup list' shows the domains of the host",
        )
    chosen = list(dict.fromkeys(names)) if names else sorted(available)
    if include:
        chosen = [n for n in chosen if any(fnmatch.fnmatchcase(n, g) for g in include)]
    return [n for n in chosen if not any(fnmatch.fnmatchcase(n, g) for g in exclude)]


def close_matches(name: str, available: Sequence[str], limit: int = 3) -> list[str]:
    """Names that look like `name`, best first: equal but for case, then by similarity."""
    key = name.casefold()
    scored: list[tuple[float, str, str]] = []
    for candidate in available:
        matcher = difflib.SequenceMatcher(None, key, candidate.casefold())
        ratio = 2.0 if candidate.casefold() == key else matcher.ratio()
        if ratio >= CLOSE_MATCH_CUTOFF:
            scored.append((-ratio, candidate.casefold(), candidate))
    return [candidate for _, _, candidate in sorted(scored)[:limit]]


def _unknown_message(name: str, available: Sequence[str]) -> str:
    matches = close_matches(name, available)
    if matches:
        return f"unknown domain {name!r} (did you mean {' or '.join(repr(m) for m in matches)}?)"
    return f"unknown domain {name!r}"
