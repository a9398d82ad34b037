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
from virtbackup.cli.remote_options import chosen_remote, remote_options, remote_store
from virtbackup.core.errors import UsageError
from virtbackup.core.manifest import Manifest, Sealed, format_time


@click.command("backups")
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    help="Backup destination directory [default: `dest` of the configuration file].",
)
@remote_options
@click.argument("domain", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_globals
def backups_command(
    options: GlobalOptions,
    dest: Path | None,
    remote: bool,
    remote_location: str | None,
    host: str | None,
    domain: str | None,
    as_json: bool,
) -> None:
    """List the backups that exist, with date, size, method and verified state
    (with --remote: this host's backups on the offsite remote)."""
    config = load_settings(options)
    offsite = remote_store(chosen_remote(remote, remote_location), host, config)
    if offsite is not None:
        where = offsite.remote.path(offsite.offsite.host)
        backups = offsite.list_backups(domain)
    else:
        dest = dest or config.dest
        if dest is None:
            raise UsageError("no backup destination", "give --dest DIR or --remote")
        where, backups = str(dest), BackupStore(dest).list_backups(domain)
    if as_json:
        key = "remote" if offsite is not None else "dest"
        document = {key: where, "backups": [backup_as_json(b) for b in backups]}
        click.echo(json.dumps(document, indent=2))
    else:
        console = Console()
        if not console.is_terminal:  # a pipe or a log: lines long enough to hold a problem
            console = Console(width=max(console.width, 200))
        console.print(backups_table(backups))


def verified_state(backup: BackupInfo) -> str:
    if backup.problem is not None:
        return "unreadable"
    if backup.verified is None:
        return "never"
    state = "ok" if backup.verified.ok else "FAILED"
    return f"{state} {format_time(backup.verified.verified_at)}"


def backups_table(backups: list[BackupInfo]) -> Table:
    """Every value comes from the backups (names, methods, problems): shown as text,
    never read as rich markup."""
    table = Table("domain", "date (UTC)", "method", "disks", "size", "encrypted", "verified")
    for backup in backups:
        manifest = backup.manifest
        size = _human_size(backup.size)
        if manifest is None:  # not a readable backup: its problem says why
            problem = Text(f"unreadable: {backup.problem}", style="yellow")
            table.add_row(Text(backup.domain), Text(backup.stamp), "?", "?", size, "?", problem)
            continue
        table.add_row(
            Text(backup.domain),
            format_time(manifest.started),
            Text(manifest.method),
            Text(", ".join(manifest.targets)),
            size,
            "yes" if isinstance(manifest, Sealed) else "no",
            Text(verified_state(backup)),
        )
    return table


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


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
