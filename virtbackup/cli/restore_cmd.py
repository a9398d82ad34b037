"""`virtbackup restore BACKUP --to DIR [--to-source] [--define NAME [--keep-host-devices]]
[--force] [--identity FILE] [--remote | --remote-location NAME:PATH] [--host NAME]`."""

import time
from pathlib import Path

import click

from virtbackup.adapters.hypervisor.connection import is_remote
from virtbackup.adapters.journal import resolve_state_dir
from virtbackup.cli.context import DIRECTORY, GlobalOptions, pass_globals
from virtbackup.cli.progress_view import progress_sink
from virtbackup.cli.remote_options import Reading, reading_options, resolve_backup
from virtbackup.core.errors import UsageError
from virtbackup.core.network_source import is_network_source, put_back_hint
from virtbackup.core.progress import LogSteps
from virtbackup.core.signature import SignatureState
from virtbackup.core.text import printable
from virtbackup.engine.datapath.restore import restore_backup
from virtbackup.engine.runs.instant import instant_restore
from virtbackup.engine.stores.backup_access import Trust
from virtbackup.engine.stores.remote import fetched_repository


@click.command("restore")
@click.argument("backup")
@click.option("--to", "target", required=True, type=DIRECTORY)
@click.option("--define", metavar="NAME", help="Define a new domain NAME using the restored disks.")
@click.option(
    "--keep-host-devices",
    is_flag=True,
    help="With --define: keep the backup's host devices, host files and "
    "qemu arguments instead of dropping them (never a disk the backup did not restore).",
)
@click.option(
    "--to-source",
    is_flag=True,
    help="Also write each network and block disk back into its own source (the domain "
    "shut off or undefined, the source's size the disk's).",
)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@click.option(
    "--instant",
    is_flag=True,
    help="With --define: start the domain at once on overlays backed by the backup, "
    "then copy the data in while it runs.",
)
@reading_options
@pass_globals
def restore_command(
    options: GlobalOptions,
    backup: str,
    target: Path,
    define: str | None,
    keep_host_devices: bool,
    to_source: bool,
    force: bool,
    instant: bool,
    reading: Reading,
) -> None:
    """Write a backup's disks back, sparse and byte-identical. BACKUP is a backup
    directory, or DOMAIN/STAMP on the remote with --remote (streamed, no local copy).
    A bad signature, or none where allowed_signers expects one, stops it before
    anything is written."""
    if keep_host_devices and define is None:
        raise UsageError("--keep-host-devices needs --define NAME")
    if to_source and is_remote(options.uri):
        # the sources are opened from this host: a block device here is not one there
        raise UsageError(
            f"--to-source writes the sources of this host only, not of {options.uri}",
            "run the restore on that host",
        )
    if instant and to_source:
        raise UsageError("--instant runs the domain on new local images: not with --to-source")
    remote_name, config, trust = reading.settle(options)
    if instant:
        _instant(
            options, backup, target, define, force, keep_host_devices, remote_name, reading, trust
        )
        return
    source = resolve_backup(backup, remote_name, reading.host, config)
    with fetched_repository(source), progress_sink(options.verbosity) as progress:
        result = restore_backup(
            source,
            target,
            progress,
            force=force,
            define_as=define,
            uri=options.uri,
            identity=reading.identity,
            trust=trust,
            keep_host_devices=keep_host_devices,
            to_source=to_source,
        )
    if result.signature.state != SignatureState.UNSIGNED or trust.allowed_signers is not None:
        click.echo(f"signature\t{result.signature.describe()}")
    for image in result.images:
        click.echo(f"{image.target}\t{image.path}")
    written = {put.target for put in result.written}
    for put in result.written:
        click.echo(f"{put.target}\twritten into {put.source}")
    for disk in result.manifest.disks:
        if is_network_source(disk.source) and disk.target not in written:
            restored = next(i.path for i in result.images if i.target == disk.target)
            hint = put_back_hint(disk.target, disk.source, str(restored), disk.format)
            # the source is the backup's word: shown inert, on one line
            click.echo(f"virtbackup: note: {printable(hint)}", err=True)
    if result.domain_uuid is not None:
        click.echo(f"defined domain {define} ({result.domain_uuid})")
    if result.dropped and keep_host_devices:
        click.echo(
            f"virtbackup: warning: {define} was defined without the original's disks the "
            f"backup did not restore: {'; '.join(result.dropped)}",
            err=True,
        )
    elif result.dropped:
        click.echo(
            f"virtbackup: warning: {define} was defined without host resources the backup "
            f"did not restore: {'; '.join(result.dropped)} (--keep-host-devices keeps them)",
            err=True,
        )


def _instant(
    options: GlobalOptions,
    backup: str,
    target: Path,
    define: str | None,
    force: bool,
    keep_host_devices: bool,
    remote_name: str | None,
    reading: Reading,
    trust: Trust,
) -> None:
    if define is None:
        raise UsageError("--instant needs --define NAME")
    if force or remote_name is not None:
        raise UsageError("--instant restores a backup on this host, without --force")
    started = time.monotonic()

    def running(uuid: str) -> None:
        seconds = time.monotonic() - started
        click.echo(f"running\t{define} ({uuid}) after {seconds:.1f} s; copying the data in")

    with progress_sink(options.verbosity) as progress:
        result = instant_restore(
            Path(backup),
            target,
            define,
            uri=options.uri,
            state_dir=resolve_state_dir(options.state_dir),
            identity=reading.identity,
            trust=trust,
            progress=progress,
            steps=LogSteps(),
            on_running=running,
            keep_host_devices=keep_host_devices,
        )
    for disk, path in result.images:
        click.echo(f"{disk}\t{path}")
    click.echo(f"defined domain {define} ({result.domain_uuid}), on local images only")
