"""`virtbackup mount BACKUP MOUNTPOINT [--identity FILE]` and `virtbackup umount
MOUNTPOINT`: browse a backup's guest filesystems read-only."""

from pathlib import Path

import click

from virtbackup.cli.context import DIRECTORY, GlobalOptions, pass_globals
from virtbackup.cli.remote_options import Reading, reading_options
from virtbackup.core.errors import Interrupted, UsageError
from virtbackup.engine.files.guest_mount import mount_backup, unmount_backup


@click.command("mount")
@click.argument("backup", type=DIRECTORY)
@click.argument("mountpoint", type=click.Path(path_type=Path))
@reading_options
@pass_globals
def mount_command(options: GlobalOptions, backup: Path, mountpoint: Path, reading: Reading) -> None:
    """Show a backup's filesystems read-only at MOUNTPOINT (an empty directory), each
    as a directory named as `files` names it (/vda1, /vg-data), until `virtbackup
    umount MOUNTPOINT`, Ctrl-C or SIGTERM. Every byte read is checked against the
    backup's digests; a damaged chunk is an I/O error for the file it holds."""
    remote_name, _config, trust = reading.settle(options)
    if remote_name is not None:
        raise UsageError("mount reads backups on this host only", "export it with --to first")

    def mounted() -> None:
        click.echo(f"mounted\t{mountpoint}\t(read-only; virtbackup umount {mountpoint} ends it)")

    try:
        mount_backup(backup, mountpoint, reading.identity, trust, mounted)
    except Interrupted:
        pass  # a signal is how a mount in the foreground ends
    click.echo(f"unmounted\t{mountpoint}")


@click.command("umount")
@click.argument("mountpoint", type=DIRECTORY)
def umount_command(mountpoint: Path) -> None:
    """End a `virtbackup mount` at MOUNTPOINT."""
    unmount_backup(mountpoint)
