"""`virtbackup backups --dest DIR [DOMAIN] [--json]`: the backups that exist, here or
(`--remote`) on the offsite remote."""

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from virtbackup.adapters.store import BackupInfo, BackupStore
from virtbackup.cli.context import GlobalOptions, load_settings, pass_globals
from virtbackup.cli.output import text
from virtbackup.cli.remote_options import chosen_remote, remote_options, remote_store
from virtbackup.cli.trust_options import allowed_signers_option
from virtbackup.core.backup_errors import CorruptBackup, RemoteError
from virtbackup.core.errors import UsageError
from virtbackup.core.manifest import Manifest, Sealed, format_time
from virtbackup.core.signature import SignatureCheck, SignatureState
from virtbackup.core.sizes import human_size
from virtbackup.engine.stores.backup_access import BackupFiles, LocalFiles, check_signatures
from virtbackup.engine.stores.offsite import RemoteStore


@click.command("backups")
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    help="Backup destination directory [default: `dest` of the configuration file].",
)
@remote_options
@click.argument("domain", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@allowed_signers_option
@pass_globals
def backups_command(
    options: GlobalOptions,
    dest: Path | None,
    remote: bool,
    remote_location: str | None,
    host: str | None,
    domain: str | None,
    as_json: bool,
    allowed_signers: Path | None,
) -> None:
    """List the backups that exist, with date, size, method, signature and verified
    state (with --remote: this host's backups on the offsite remote)."""
    config = load_settings(options)
    signers = allowed_signers or config.allowed_signers
    offsite = remote_store(chosen_remote(remote, remote_location), host, config)
    if offsite is not None:
        where = offsite.remote.path(offsite.offsite.host)
        backups = offsite.list_backups(domain)
    else:
        dest = dest or config.dest
        if dest is None:
            raise UsageError("no backup destination", "give --dest DIR or --remote")
        where, backups = str(dest), BackupStore(dest).list_backups(domain)
    signatures = [signature_of(backup, offsite, signers) for backup in backups]
    if as_json:
        key = "remote" if offsite is not None else "dest"
        listed = [
            {**backup_as_json(b), "signature": signature_as_json(check)}
            for b, check in zip(backups, signatures, strict=True)
        ]
        click.echo(json.dumps({key: where, "backups": listed}, indent=2))
    else:
        console = Console()
        if not console.is_terminal:  # a pipe or a log: lines long enough to hold a problem
            console = Console(width=max(console.width, 200))
        console.print(backups_table(backups, signatures))


def signature_of(
    backup: BackupInfo, offsite: RemoteStore | None, allowed_signers: Path | None
) -> SignatureCheck:
    files: BackupFiles
    if offsite is not None:
        files = offsite.files(backup.domain, backup.stamp)
    else:
        assert isinstance(backup.path, Path)
        files = LocalFiles(backup.path)
    try:
        return check_signatures(files, allowed_signers)
    except (CorruptBackup, RemoteError) as err:
        return SignatureCheck(SignatureState.BAD, problem=err.message)


def signature_as_json(check: SignatureCheck) -> dict[str, Any]:
    return {"state": check.state.value, "principal": check.principal, "problem": check.problem}


def verified_state(backup: BackupInfo) -> str:
    if backup.problem is not None:
        return "unreadable" if backup.manifest is None else "not counted"
    if backup.verified is None:
        return "never"
    state = "ok" if backup.verified.ok else "FAILED"
    return f"{state} {format_time(backup.verified.verified_at)}"


def backups_table(backups: list[BackupInfo], signatures: list[SignatureCheck]) -> Table:
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
    return table


def _signature_cell(check: SignatureCheck) -> Text:
    if check.state == SignatureState.SIGNED:
        return text(f"signed ({check.principal})")
    return text("BAD" if check.state == SignatureState.BAD else check.state.value)


def backup_as_json(backup: BackupInfo) -> dict[str, Any]:
    manifest = backup.manifest
    verified = backup.verified
    return {
        "domain": backup.domain,
        "stamp": backup.stamp,
        "path": str(backup.path),
        "size": backup.size,
        "problem": backup.problem,
        "started": format_time(manifest.started) if manifest else None,
        "finished": format_time(manifest.finished) if manifest else None,
        "method": manifest.method if manifest else None,
        "domain_uuid": manifest.domain_uuid if isinstance(manifest, Manifest) else None,
        "encrypted": isinstance(manifest, Sealed) if manifest else None,
        "disks": [
            {
                "target": disk.target,
                "format": disk.format,
                "source": disk.source,
                "virtual_size": disk.virtual_size,
                "byte_size": disk.byte_size,
                "stored_size": disk.stored_size,
                "file": disk.file,
                "digest_algorithm": disk.digest_algorithm,
                "digest": disk.digest,
            }
            for disk in (manifest.disks if isinstance(manifest, Manifest) else ())
        ],
        "verified": None
        if verified is None
        else {
            "ok": verified.ok,
            "at": format_time(verified.verified_at),
            "problem": verified.problem,
        },
    }
