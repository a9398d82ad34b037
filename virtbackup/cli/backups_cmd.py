"""`virtbackup backups --dest DIR [DOMAIN] [--json] [--summary]`: the backups that exist,
here or (`--remote`) on the offsite remote, with each one's logical size and what removing
it would free; `--summary`: the repository of DEST in figures."""

import json
from pathlib import Path
from typing import Any

import click

from virtbackup.cli.backups_view import print_backups, print_summary
from virtbackup.cli.context import (
    GlobalOptions,
    chosen_dest,
    dest_option,
    load_settings,
    pass_globals,
)
from virtbackup.cli.remote_options import chosen_remote, remote_options, remote_store
from virtbackup.cli.trust_options import allowed_signers_option
from virtbackup.core.backup_errors import CorruptBackup, RemoteError
from virtbackup.core.errors import UsageError
from virtbackup.core.json_fields import format_time
from virtbackup.core.manifest import Manifest, Sealed
from virtbackup.core.signature import SignatureCheck, SignatureState
from virtbackup.engine.stores.backup_access import check_signatures
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.repository_usage import (
    BackupUsage,
    RepositorySummary,
    Usage,
    plain_usage,
    usage_of,
)
from virtbackup.engine.stores.store import BackupInfo, Store


@click.command("backups")
@dest_option()
@remote_options
@click.argument("domain", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--summary",
    is_flag=True,
    help="Show the repository of DEST instead: chunks, stored bytes, logical bytes of "
    "its backups and the dedup ratio.",
)
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
    summary: bool,
    allowed_signers: Path | None,
) -> None:
    """List the backups that exist, with date, size, what removing each would free,
    method, signature and verified state (with --remote: this host's backups on the
    offsite remote)."""
    config = load_settings(options)
    signers = allowed_signers or config.allowed_signers
    offsite = remote_store(chosen_remote(remote, remote_location), host, config)
    store: Store
    if offsite is not None:
        store = offsite
    else:
        store = LocalStore(chosen_dest(dest, config, "--remote"))
    if summary and (domain is not None or not isinstance(store, LocalStore)):
        raise UsageError("--summary shows the repository of a --dest, without DOMAIN")
    usage = _usage(store)
    if summary:
        _show_summary(store.label, usage, as_json)
        return
    backups = store.list_backups(domain)
    signatures = [signature_of(backup, store, signers) for backup in backups]
    usages = [_usage_of(usage, backup) for backup in backups]
    if as_json:
        key = "remote" if offsite is not None else "dest"
        listed = [
            {**backup_as_json(b), **usage_as_json(u), "signature": signature_as_json(check)}
            for b, u, check in zip(backups, usages, signatures, strict=True)
        ]
        problems = list(usage.problems) if usage is not None else []
        click.echo(
            json.dumps({key: store.label, "backups": listed, "problems": problems}, indent=2)
        )
    else:
        print_backups(backups, signatures, usages)
        for problem in usage.problems if usage is not None else ():
            click.echo(f"virtbackup: warning: {problem}", err=True)


def _usage(store: Store) -> Usage | None:
    """The usage of every backup of a local DEST (whatever DOMAIN shows: chunks are
    shared across domains); None for a remote, which holds stream backups only."""
    if not isinstance(store, LocalStore):
        return None
    return usage_of(store, store.list_backups())


def _usage_of(usage: Usage | None, backup: BackupInfo) -> BackupUsage:
    if usage is None:
        return plain_usage(backup)
    return usage.backups.get((backup.domain, backup.stamp), plain_usage(backup))


def _show_summary(label: str, usage: Usage | None, as_json: bool) -> None:
    assert usage is not None  # a local DEST
    summary = usage.summary or RepositorySummary(0, 0, 0, 0)
    if as_json:
        document = {
            "dest": label,
            "repository": summary_as_json(summary, usage.summary is not None),
        }
        click.echo(json.dumps(document, indent=2))
    else:
        print_summary(label, summary, usage.summary is not None)


def usage_as_json(usage: BackupUsage) -> dict[str, Any]:
    return {"logical_size": usage.logical_size, "frees": usage.frees}


def summary_as_json(summary: RepositorySummary, exists: bool) -> dict[str, Any]:
    return {
        "exists": exists,
        "chunks": summary.chunks,
        "stored_bytes": summary.stored_bytes,
        "logical_bytes": summary.logical_bytes,
        "backups": summary.backups,
        "dedup_ratio": summary.dedup_ratio,
        "encrypted": {  # logical bytes need a key: the ratio is of the figures above
            "chunks": summary.encrypted_chunks,
            "stored_bytes": summary.encrypted_bytes,
            "backups": summary.encrypted_backups,
        },
    }


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
