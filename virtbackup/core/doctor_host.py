"""The host's doctor checks: libvirtd, the programs, the libguestfs appliance,
encryption, signing and the offsite remote, the room at the destination."""

from collections.abc import Sequence

from virtbackup.core.doctor_facts import (
    DestFacts,
    Finding,
    HostFacts,
    OffsiteFacts,
    ProgramFact,
    Severity,
)
from virtbackup.core.sizes import human_size


def host_findings(host: HostFacts, expected: int) -> list[Finding]:
    found = _blocker_or_info(
        "libvirt",
        host.libvirt_error,
        f"libvirtd at {host.uri} cannot be reached",
        "start it (systemctl start libvirtd, or libvirtd -d and virtlogd -d), or check --connect",
        f"libvirtd at {host.uri} answers",
    )
    found += _program_findings(host.programs)
    found += _guestfs_findings(host)
    found += _dest_findings(host.dest, expected)
    found += _offsite_findings(host.offsite)
    if not host.lvm_checked:
        found.append(
            Finding(
                Severity.INFO,
                "lvm",
                "whether images live on LVM logical volumes cannot be told (lvs): volume "
                "group free space for LVM snapshots is not checked",
                "apt-get install lvm2, or run as root",
            )
        )
    return found


_PROGRAM_ROLES = {
    "qemu-img": (
        Severity.BLOCKER,
        "images of shut-off domains cannot be inspected and overlays not merged offline",
    ),
    "lz4": (
        Severity.WARNING,
        "backups are still written, but cannot be unpacked with stock tools (lz4 -d)",
    ),
    "lvcreate": (Severity.INFO, "the lvm method (LVM snapshots) cannot be used"),
}


def _program_findings(programs: Sequence[ProgramFact]) -> list[Finding]:
    found = []
    for program in programs:
        if program.path is not None:
            continue
        severity, effect = _PROGRAM_ROLES.get(program.name, (Severity.WARNING, "it is needed"))
        found.append(
            Finding(
                severity,
                "program",
                f"{program.name} is not installed: {effect}",
                f"apt-get install {program.package}",
            )
        )
    present = [p.name for p in programs if p.path is not None]
    if present:
        found.append(Finding(Severity.INFO, "program", f"installed: {', '.join(present)}"))
    return found


def _guestfs_findings(host: HostFacts) -> list[Finding]:
    if not host.guestfs_checked:
        return [
            Finding(
                Severity.INFO,
                "guestfs",
                "libguestfs appliance not checked (--no-guestfs)",
                "run 'virtbackup doctor' without --no-guestfs, or libguestfs-test-tool",
            )
        ]
    if host.guestfs_error is None:
        return [Finding(Severity.INFO, "guestfs", "the libguestfs appliance starts: shrink works")]
    return [
        Finding(
            Severity.WARNING,
            "guestfs",
            f"'virtbackup shrink' cannot work: {host.guestfs_error}",
            "run libguestfs-test-tool to see why",
        )
    ]


def _offsite_findings(offsite: OffsiteFacts) -> list[Finding]:
    encrypted = (
        f"backups are encrypted to {offsite.recipients} key(s) of "
        f"{offsite.recipients_file}; keep the identity off this host"
    )
    signed = f"backups are signed with {offsite.sign_key}"
    answers = f"the remote {offsite.remote} answers"
    return (
        _blocker_or_info(
            "encrypt",
            offsite.encrypt_problem,
            "backups cannot be encrypted",
            "fix the recipients file: one age public key per line (age-keygen -y KEYFILE)",
            encrypted if offsite.recipients_file is not None else None,
        )
        + _blocker_or_info(
            "sign",
            offsite.sign_problem,
            "backups cannot be signed",
            "fix sign_key: a readable OpenSSH private key without passphrase",
            signed if offsite.sign_key is not None else None,
        )
        + _blocker_or_info(
            "remote",
            offsite.remote_problem,
            f"offsite copies to {offsite.remote} fail",
            "check the remote with 'rclone --config FILE lsd NAME:' and the [remote] "
            "settings; local backups are still made, but each run exits 1",
            answers if offsite.remote is not None else None,
        )
        + _remote_repository_findings(offsite)
    )


CLOCK_TOLERANCE = 60.0  # seconds: grace periods (gc_grace) are minutes


def _remote_repository_findings(offsite: OffsiteFacts) -> list[Finding]:
    """The repository on a remote that answers: readable, its secret there when it
    holds encrypted chunks, and a clock close to ours."""
    if offsite.remote is None or offsite.remote_problem is not None:
        return []
    where = f"the remote repository at {offsite.remote}"
    if offsite.repository_problem is not None:
        found = [
            Finding(
                Severity.BLOCKER,
                "remote-repository",
                f"offsite copies of repository backups fail: {offsite.repository_problem}",
                "upgrade virtbackup on this host, or point [remote] at another location",
            )
        ]
    elif offsite.repository_version is None:
        found = [
            Finding(
                Severity.INFO,
                "remote-repository",
                f"{where} does not exist yet: the first repository backup makes it",
            )
        ]
    else:
        found = [
            Finding(
                Severity.INFO,
                "remote-repository",
                f"{where} is version {offsite.repository_version}, which this version reads",
            )
        ]
    if offsite.repository_encrypted and offsite.repository_secrets == 0:
        found.append(
            Finding(
                Severity.BLOCKER,
                "remote-secret",
                f"{where} holds encrypted chunks but no secret (secrets/*.age): "
                "no host can restore them from there",
                "run a backup with encrypt set on the host whose repository made them: "
                "its offsite copy sends the secret first",
            )
        )
    if offsite.clock_problem is not None:
        found.append(
            Finding(
                Severity.WARNING,
                "remote-clock",
                f"the remote's clock could not be compared with this host's: "
                f"{offsite.clock_problem}",
            )
        )
    elif offsite.clock_offset is not None:
        offset = offsite.clock_offset
        direction = "ahead of" if offset > 0 else "behind"
        if abs(offset) > CLOCK_TOLERANCE:
            found.append(
                Finding(
                    Severity.WARNING,
                    "remote-clock",
                    f"the remote's clock is {abs(offset):.0f} s {direction} this host's: "
                    "grace periods (gc_grace) measured against times the remote keeps "
                    "are off by as much",
                    "synchronise the clocks (chrony or systemd-timesyncd on both sides)",
                )
            )
        else:
            found.append(
                Finding(
                    Severity.INFO,
                    "remote-clock",
                    f"the remote's clock is within {CLOCK_TOLERANCE:.0f} s of this host's "
                    f"({offset:+.0f} s)",
                )
            )
    return found


def _blocker_or_info(
    check: str, problem: str | None, blocked: str, fix: str, works: str | None
) -> list[Finding]:
    """A blocker saying what is `blocked` and why when there is a `problem`; else what
    `works`, when that part is set up at all (None: nothing to say)."""
    if problem is not None:
        return [Finding(Severity.BLOCKER, check, f"{blocked}: {problem}", fix)]
    return [] if works is None else [Finding(Severity.INFO, check, works)]


def _dest_findings(dest: DestFacts | None, expected: int) -> list[Finding]:
    if dest is None:
        return [
            Finding(
                Severity.INFO,
                "dest",
                "no backup destination given: free space not checked",
                "give --dest DIR or set dest in the configuration file",
            )
        ]
    if dest.problem is not None:
        return [
            Finding(
                Severity.BLOCKER,
                "dest",
                f"backups cannot be written: {dest.problem}",
                f"mkdir -p -m 0700 {dest.path} (on a filesystem with room, writable by root)",
            )
        ]
    if dest.free is None:
        return []
    if dest.free < expected:
        return [
            Finding(
                Severity.WARNING,
                "dest",
                f"{human_size(dest.free)} free in {dest.path}, the disks to back up occupy "
                f"{human_size(expected)}: the backup may not fit (lz4 usually makes it smaller)",
                "free space there, prune old backups (virtbackup prune), or choose another "
                "destination; old backups are kept until the new one is complete",
            )
        ]
    return [
        Finding(
            Severity.INFO,
            "dest",
            f"{human_size(dest.free)} free in {dest.path}, at most {human_size(expected)} needed",
        )
    ]
