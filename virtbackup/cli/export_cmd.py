"""`virtbackup export BACKUP --to DIR [--identity FILE] [--remote ...]`: any backup as a
self-contained single-stream backup (`lz4 -d` restorable) under DIR."""

from pathlib import Path

import click

from virtbackup.cli.context import DIRECTORY, GlobalOptions, pass_globals
from virtbackup.cli.progress_view import progress_sink
from virtbackup.cli.remote_options import Reading, reading_options, resolve_backup
from virtbackup.engine.datapath.export import export_backup
from virtbackup.engine.stores.local import LocalFiles
from virtbackup.engine.stores.remote import fetched_repository
from virtbackup.engine.stores.store import check_stamp


@click.command("export")
@click.argument("backup")
@click.option(
    "--to",
    "target",
    required=True,
    type=DIRECTORY,
    help="Directory to write DOMAIN/STAMP/ into (created when missing).",
)
@reading_options
@pass_globals
def export_command(options: GlobalOptions, backup: str, target: Path, reading: Reading) -> None:
    """Write a backup, in the repository or as streams, as a backup of its own in
    today's stream format: DIR/DOMAIN/STAMP/ with manifest.json, domain.xml and one
    .lz4 stream per disk, for tape, a USB disk or a colleague. BACKUP is a backup
    directory, or DOMAIN/STAMP on the remote with --remote. The export is verified
    before it appears; an encrypted backup is exported decrypted, without secrets in
    its domain XML."""
    remote_name, config, trust = reading.settle(options)
    source = resolve_backup(backup, remote_name, reading.host, config)
    stamp = source.name if isinstance(source, Path) else backup.strip("/").rpartition("/")[2]
    check_stamp(stamp)
    files = LocalFiles(source) if isinstance(source, Path) else source
    with fetched_repository(files), progress_sink(options.verbosity) as progress:
        result = export_backup(files, stamp, target, progress, reading.identity, trust)
    click.echo(f"exported\t{result.path}")
