"""The table of `virtbackup backups`."""

from rich.table import Table
from rich.text import Text

from virtbackup.cli.console import stdout_console, text
from virtbackup.core.manifest import Sealed, format_time
from virtbackup.core.signature import SignatureCheck, SignatureState
from virtbackup.core.sizes import human_size
from virtbackup.engine.stores.store import BackupInfo


def verified_state(backup: BackupInfo) -> str:
    if backup.problem is not None:
        return "unreadable" if backup.manifest is None else "not counted"
    if backup.verified is None:
        return "never"
    state = "ok" if backup.verified.ok else "FAILED"
    return f"{state} {format_time(backup.verified.verified_at)}"


def print_backups(backups: list[BackupInfo], signatures: list[SignatureCheck]) -> None:
    """Every value comes from the backups (names, methods, problems, principals): shown
    as text, never read as rich markup."""
    table = Table(
        "domain", "date (UTC)", "method", "disks", "size", "encrypted", "signature", "verified"
    )
    for backup, signature in zip(backups, signatures, strict=True):
        manifest = backup.manifest
        size = human_size(backup.size)
        if manifest is None:  # not a readable backup: its problem says why
            problem = text(f"unreadable: {backup.problem}", style="yellow")
            table.add_row(
                text(backup.domain),
                text(backup.stamp),
                "?",
                "?",
                size,
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
