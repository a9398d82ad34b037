"""The table of `virtbackup backups`."""

from rich.table import Table
from rich.text import Text

from virtbackup.cli.console import stdout_console, text
from virtbackup.core.json_fields import format_time
from virtbackup.core.manifest import Sealed
from virtbackup.core.signature import SignatureCheck, SignatureState
from virtbackup.core.sizes import human_size
from virtbackup.engine.stores.repository_usage import BackupUsage, RepositorySummary
from virtbackup.engine.stores.store import BackupInfo


def verified_state(backup: BackupInfo) -> str:
    if backup.problem is not None:
        return "unreadable" if backup.manifest is None else "not counted"
    if backup.verified is None:
        return "never"
    state = "ok" if backup.verified.ok else "FAILED"
    return f"{state} {format_time(backup.verified.verified_at)}"


def print_backups(
    backups: list[BackupInfo], signatures: list[SignatureCheck], usages: list[BackupUsage]
) -> None:
    """Every value comes from the backups (names, methods, problems, principals): shown
    as text, never read as rich markup. `logical` is what its disks hold, `frees` what
    removing it would free (its files and the chunks no other backup uses)."""
    table = Table(
        "domain",
        "date (UTC)",
        "method",
        "disks",
        "size",
        "logical",
        "frees",
        "encrypted",
        "signature",
        "verified",
    )
    for backup, signature, usage in zip(backups, signatures, usages, strict=True):
        manifest = backup.manifest
        size = human_size(backup.size)
        logical = human_size(usage.logical_size)
        frees = human_size(usage.frees)
        if manifest is None:  # not a readable backup: its problem says why
            problem = text(f"unreadable: {backup.problem}", style="yellow")
            table.add_row(
                text(backup.domain),
                text(backup.stamp),
                "?",
                "?",
                size,
                logical,
                frees,
                "?",
                "?",
                problem,
            )
            continue
        table.add_row(
            text(backup.domain),
            format_time(manifest.started),
            text(manifest.method),
            text(", ".join(manifest.targets)),
            size,
            logical,
            frees,
            "yes" if isinstance(manifest, Sealed) else "no",
            _signature_cell(signature),
            text(verified_state(backup))
            if backup.problem is None  # of another domain, from the future: not counted
            else text(f"not counted: {backup.problem}", style="yellow"),
        )
    stdout_console(200).print(table)  # a pipe or a log: lines long enough to hold a problem


def _signature_cell(check: SignatureCheck) -> Text:
    if check.state == SignatureState.SIGNED:
        return text(f"signed ({check.principal})")
    return text("BAD" if check.state == SignatureState.BAD else check.state.value)


def print_summary(dest: str, summary: RepositorySummary, exists: bool) -> None:
    table = Table("repository", "chunks", "stored", "logical", "backups", "dedup ratio")
    ratio = summary.dedup_ratio
    table.add_row(
        text(dest) if exists else text(f"{dest} (none)"),
        str(summary.chunks),
        human_size(summary.stored_bytes),
        human_size(summary.logical_bytes),
        str(summary.backups),
        "-" if ratio is None else f"{ratio:.2f}",
    )
    if summary.encrypted_chunks or summary.encrypted_backups:
        table.add_row(
            text(f"{dest} (encrypted)"),
            str(summary.encrypted_chunks),
            human_size(summary.encrypted_bytes),
            "-",  # inside the encrypted manifests
            str(summary.encrypted_backups),
            "-",
        )
    stdout_console(200).print(table)
