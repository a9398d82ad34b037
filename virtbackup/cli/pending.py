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


@click.command("doctor")
@click.argument("domains", nargs=-1)
@json_option
def doctor_command(domains: tuple[str, ...], as_json: bool) -> None:
    """Tell what stops this host or domain from small, consistent backups."""
    raise NotImplementedYet("doctor")


COMMANDS = [
    doctor_command,
]
