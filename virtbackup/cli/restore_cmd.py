"""`virtbackup restore BACKUP --to DIR [--define NAME] [--force]`."""

from pathlib import Path

import click

from virtbackup.cli.context import GlobalOptions, pass_globals
from virtbackup.cli.progress_view import progress_sink
from virtbackup.engine.restore import restore_backup


@click.command("restore")
@click.argument("backup", type=click.Path(file_okay=False, path_type=Path))
@click.option("--to", "target", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--define", metavar="NAME", help="Define a new domain NAME using the restored disks.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@pass_globals
def restore_command(
    options: GlobalOptions, backup: Path, target: Path, define: str | None, force: bool
) -> None:
    """Write a backup's disks back, sparse and byte-identical."""
    with progress_sink(options.verbosity) as progress:
        result = restore_backup(
            backup, target, progress, force=force, define_as=define, uri=options.uri
        )
    for image in result.images:
        click.echo(f"{image.target}\t{image.path}")
    if result.domain_uuid is not None:
        click.echo(f"defined domain {define} ({result.domain_uuid})")
