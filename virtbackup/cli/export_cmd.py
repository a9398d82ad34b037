"""`virtbackup export BACKUP --to DIR [--identity FILE] [--remote ...]`: any backup as a
self-contained single-stream backup (`lz4 -d` restorable) under DIR.

`virtbackup export BACKUP --nbd SOCKET [--disk TARGET] [--identity FILE]`: one disk of a
backup on this host served read-only over NBD until Ctrl-C or SIGTERM."""

from pathlib import Path

import click

from virtbackup.cli.context import DIRECTORY, FILE, GlobalOptions, pass_globals
from virtbackup.cli.progress_view import progress_sink
from virtbackup.cli.remote_options import Reading, reading_options, resolve_backup
from virtbackup.core.errors import Interrupted, UsageError
from virtbackup.engine.datapath.export import export_backup
from virtbackup.engine.datapath.nbd_serve import ServedDisk, serve_until_stopped
from virtbackup.engine.stores.local import LocalFiles
from virtbackup.engine.stores.remote import fetched_repository
from virtbackup.engine.stores.store import check_stamp


@click.command("export")
@click.argument("backup")
@click.option(
    "--to",
    "target",
    type=DIRECTORY,
    help="Directory to write DOMAIN/STAMP/ into (created when missing).",
)
@click.option(
    "--nbd",
    "socket",
    type=FILE,
    help="Serve a disk read-only over NBD on this unix socket until stopped.",
)
@click.option("--disk", metavar="TARGET", help="With --nbd: the disk to serve (e.g. vda).")
@reading_options
@pass_globals
def export_command(
    options: GlobalOptions,
    backup: str,
    target: Path | None,
    socket: Path | None,
    disk: str | None,
    reading: Reading,
) -> None:
    """Write a backup, in the repository or as streams, as a backup of its own in
    today's stream format: DIR/DOMAIN/STAMP/ with manifest.json, domain.xml and one
    .lz4 stream per disk, for tape, a USB disk or a colleague. BACKUP is a backup
    directory, or DOMAIN/STAMP on the remote with --remote. The export is verified
    before it appears; an encrypted backup is exported decrypted, without secrets in
    its domain XML.

    With --nbd SOCKET instead of --to, one disk of a backup directory on this host is
    served read-only to NBD clients (qemu-img, nbdcopy, guestfish --ro) until Ctrl-C
    or SIGTERM; every byte served is checked against the backup's digests, and a
    damaged chunk is an I/O error for the reads it covers."""
    if (target is None) == (socket is None):
        raise UsageError("give either --to DIR or --nbd SOCKET")
    if disk is not None and socket is None:
        raise UsageError("--disk goes with --nbd SOCKET")
    remote_name, config, trust = reading.settle(options)
    if socket is not None:
        if remote_name is not None:
            raise UsageError(
                "--nbd serves backups on this host only",
                "export the remote backup with --to DIR first",
            )

        def ready(served: ServedDisk, uri: str) -> None:
            click.echo(f"serving\t{served.target}\t{uri}\t(read-only; Ctrl-C stops)")

        try:
            serve_until_stopped(Path(backup), socket, reading.identity, trust, disk, ready)
        except Interrupted:
            click.echo("stopped")
        return
    assert target is not None
    source = resolve_backup(backup, remote_name, reading.host, config)
    stamp = source.name if isinstance(source, Path) else backup.strip("/").rpartition("/")[2]
    check_stamp(stamp)
    files = LocalFiles(source) if isinstance(source, Path) else source
    with fetched_repository(files), progress_sink(options.verbosity) as progress:
        result = export_backup(files, stamp, target, progress, reading.identity, trust)
    click.echo(f"exported\t{result.path}")
