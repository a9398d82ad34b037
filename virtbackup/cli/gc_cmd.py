"""`virtbackup gc [--dest DIR] [--dry-run] [--json]`: remove the repository's chunks no
backup references (engine/stores/gc.py)."""

import json
from pathlib import Path

import click

from virtbackup.cli.context import (
    GlobalOptions,
    chosen_dest,
    dest_option,
    load_settings,
    pass_globals,
)
from virtbackup.cli.gc_view import gc_as_json, print_gc
from virtbackup.core.errors import ExitCode, UsageError
from virtbackup.engine.stores.gc import GcResult, GcSettings, collect_garbage


@click.command("gc")
@dest_option("Backup destination")
@click.option("--dry-run", is_flag=True, help="Show what would be freed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_globals
def gc_command(options: GlobalOptions, dest: Path | None, dry_run: bool, as_json: bool) -> int:
    """Remove repository chunks no backup references; safe while backups run.

    Every chunk of every complete backup is marked as used; a chunk unused for the
    grace period (gc_grace in the configuration, 300 s by default) and since the start
    of the oldest backup running on any host is removed. A backup that cannot be read
    stops gc before anything is removed. `prune` runs gc itself.
    """
    config = load_settings(options)
    dest = chosen_dest(dest, config)
    if not dest.is_dir():
        raise UsageError(f"backup destination {dest} does not exist")
    result = collect_garbage(dest, GcSettings(grace=config.gc_grace, dry_run=dry_run))
    if as_json:
        click.echo(json.dumps(gc_as_json(result, str(dest), config.gc_grace), indent=2))
    else:
        print_gc(result, str(dest), config.gc_grace)
    return gc_exit_code(result)


def gc_exit_code(result: GcResult | None) -> ExitCode:
    """1 when a backup references a chunk that is not there: gc did its work, but those
    backups are damaged."""
    return ExitCode.FAILED if result is not None and result.missing_count else ExitCode.OK
