"""Commands of the command tree whose implementation has not landed yet.

Each keeps the options MISSION.md promises, so `--help` tells the whole contract, and
answers with a clear "not implemented yet" (exit 2) instead of fake output. A command
moves to its own module when its issue lands.
"""

from pathlib import Path

import click

from virtbackup.core.errors import NotImplementedYet

METHODS = ["auto", "snapshot", "lvm", "shutdown", "offline"]

dest_option = click.option(
    "--dest",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Backup destination directory.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.command("backup")
@click.argument("domains", nargs=-1, required=True)
@dest_option
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True)
def backup_command(domains: tuple[str, ...], dest: Path, method: str) -> None:
    """Back up the named domains into DEST/<domain>/<UTC stamp>/."""
    raise NotImplementedYet("backup")


@click.command("all")
@dest_option
@click.option("--include", multiple=True, metavar="GLOB", help="Only domains matching GLOB.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip domains matching GLOB.")
def all_command(dest: Path, include: tuple[str, ...], exclude: tuple[str, ...]) -> None:
    """Back up every domain of the host (the nightly job)."""
    raise NotImplementedYet("all")


@click.command("prune")
@dest_option
@click.option("--keep-last", type=click.IntRange(min=0), metavar="N")
@click.option("--keep-daily", type=click.IntRange(min=0), metavar="N")
@click.option("--keep-weekly", type=click.IntRange(min=0), metavar="N")
@click.option("--keep-monthly", type=click.IntRange(min=0), metavar="N")
@click.option("--dry-run", is_flag=True, help="Show what would be removed.")
def prune_command(dest: Path, dry_run: bool, **keep: int | None) -> None:
    """Remove old backups by a retention policy; never the newest complete one."""
    raise NotImplementedYet("prune")


@click.command("clean")
@click.option("--dry-run", is_flag=True, help="Show what would be undone.")
def clean_command(dry_run: bool) -> None:
    """Undo what an interrupted run left: overlays, snapshots, mounts, partial dirs."""
    raise NotImplementedYet("clean")


@click.command("shrink")
@click.argument("domains", nargs=-1)
@click.option("--yes", is_flag=True, help="Do not ask; shrink every named domain.")
def shrink_command(domains: tuple[str, ...], yes: bool) -> None:
    """Sparsify stopped domains' images in-process with libguestfs."""
    raise NotImplementedYet("shrink")


@click.command("doctor")
@click.argument("domains", nargs=-1)
@json_option
def doctor_command(domains: tuple[str, ...], as_json: bool) -> None:
    """Tell what stops this host or domain from small, consistent backups."""
    raise NotImplementedYet("doctor")


COMMANDS = [
    backup_command,
    all_command,
    prune_command,
    clean_command,
    shrink_command,
    doctor_command,
]
