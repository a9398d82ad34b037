"""`virtbackup files BACKUP ls [PATH...]` and `files BACKUP get PATH... --to DIR`: a backup's
guest files listed or copied out without restoring it."""

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import click

from virtbackup.adapters.guestfs_files import Entry
from virtbackup.cli.context import DIRECTORY, GlobalOptions, json_option, pass_globals
from virtbackup.cli.remote_options import Reading, reading_options
from virtbackup.core.errors import UsageError
from virtbackup.engine.files.guest_files import check_targets_free, guest_files


@click.command("files")
@click.argument("backup", type=DIRECTORY)
@click.argument("action", type=click.Choice(["ls", "get"]))
@click.argument("paths", nargs=-1)
@click.option("--to", "target", type=DIRECTORY, help="With get: the directory to copy into.")
@json_option("the listing")
@reading_options
@pass_globals
def files_command(
    options: GlobalOptions,
    backup: Path,
    action: str,
    paths: tuple[str, ...],
    target: Path | None,
    as_json: bool,
    reading: Reading,
) -> None:
    """List (ls) or copy out (get) files of a backup on this host, read through the
    libguestfs appliance straight from the backup. Each filesystem of the guest is a
    directory of the root, named after its device: /vda1 (partition 1 of disk vda),
    /vg-data (logical volume data of volume group vg); `ls /` lists them (--json: an
    object of the listings by PATH). get copies
    files, links and directory trees with owner, mode and times into --to DIR, never
    over what is there."""
    remote_name, _config, trust = reading.settle(options)
    if remote_name is not None:
        raise UsageError("files reads backups on this host only", "export it with --to first")
    if action == "get" and (not paths or target is None):
        raise UsageError("get needs PATH... and --to DIR")
    if action == "get":
        assert target is not None
        if not target.is_dir():
            raise UsageError(f"{target} is not a directory", "create it first")
        check_targets_free(list(paths), target)
    with guest_files(backup, reading.identity, trust) as guest:
        if action == "ls":
            listings = {path: guest.ls(path) for path in paths or ("/",)}
            if as_json:
                rows = {path: [_as_dict(e) for e in found] for path, found in listings.items()}
                click.echo(json.dumps(rows, indent=2))
                return
            for number, (path, found) in enumerate(listings.items()):
                if len(listings) > 1:  # headed and parted as ls does
                    click.echo(f"\n{path}:" if number else f"{path}:")
                for entry in found:
                    click.echo(_as_line(entry))
            return
        assert target is not None
        for path in paths:
            click.echo(f"copied\t{path}\t{guest.get(path, target)}")


def _mtime(entry: Entry) -> str:
    moment = datetime.fromtimestamp(entry.mtime_ns / 1e9, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_line(entry: Entry) -> str:
    name = f"{entry.name} -> {entry.link}" if entry.link is not None else entry.name
    fields = [stat.filemode(entry.mode), entry.uid, entry.gid, entry.size, _mtime(entry), name]
    return "\t".join(str(field) for field in fields)


def _as_dict(entry: Entry) -> dict[str, object]:
    return {
        "name": entry.name,
        "mode": f"{stat.S_IMODE(entry.mode):04o}",
        "type": stat.filemode(entry.mode)[0],
        "uid": entry.uid,
        "gid": entry.gid,
        "size": entry.size,
        "mtime": _mtime(entry),
        "link": entry.link,
    }
