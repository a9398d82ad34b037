"""`virtbackup backups --dest DIR [DOMAIN] [--json]`: the backups that exist, here or
(`--remote`) on the offsite remote."""

import json
from pathlib import Path
from typing import Any

import click

from virtbackup.cli.backups_view import print_backups
from virtbackup.cli.context import GlobalOptions, load_settings, pass_globals
from virtbackup.cli.remote_options import chosen_remote, remote_options, remote_store
from virtbackup.cli.trust_options import allowed_signers_option
from virtbackup.core.backup_errors import CorruptBackup, RemoteError
from virtbackup.core.errors import UsageError
from virtbackup.core.manifest import Manifest, Sealed, format_time
from virtbackup.core.signature import SignatureCheck, SignatureState
from virtbackup.engine.stores.backup_access import check_signatures
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.store import BackupInfo, Store


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
    store: Store
    if offsite is not None:
        store = offsite
    else:
        dest = dest or config.dest
        if dest is None:
            raise UsageError("no backup destination", "give --dest DIR or --remote")
        store = LocalStore(dest)
    backups = store.list_backups(domain)
    signatures = [signature_of(backup, store, signers) for backup in backups]
    if as_json:
        key = "remote" if offsite is not None else "dest"
        listed = [
            {**backup_as_json(b), "signature": signature_as_json(check)}
            for b, check in zip(backups, signatures, strict=True)
        ]
        click.echo(json.dumps({key: store.label, "backups": listed}, indent=2))
    else:
        print_backups(backups, signatures)


def signature_of(backup: BackupInfo, store: Store, allowed_signers: Path | None) -> SignatureCheck:
    try:
        return check_signatures(store.files(backup.domain, backup.stamp), allowed_signers)
    except (CorruptBackup, RemoteError) as err:
        return SignatureCheck(SignatureState.BAD, problem=err.message)


def signature_as_json(check: SignatureCheck) -> dict[str, Any]:
    return {"state": check.state.value, "principal": check.principal, "problem": check.problem}


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
