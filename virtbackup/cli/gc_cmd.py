"""`virtbackup gc [--dest DIR] [--dry-run] [--json]`: remove the repository's chunks no
backup references (engine/stores/gc.py)."""

import json
from pathlib import Path

import click

from virtbackup.adapters.journal import resolve_state_dir
from virtbackup.cli.context import (
    GlobalOptions,
    chosen_dest,
    dest_option,
    load_settings,
    pass_globals,
)
from virtbackup.cli.gc_view import gc_as_json, print_gc, print_remote_gc
from virtbackup.cli.remote_options import chosen_remote, remote_options, remote_store
from virtbackup.core.errors import ExitCode, UsageError
from virtbackup.engine.stores.gc import GcResult, GcSettings, collect_garbage
from virtbackup.engine.stores.remote_gc import collect_remote_garbage


@click.command("gc")
@dest_option("Backup destination")
@click.option("--dry-run", is_flag=True, help="Show what would be freed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@remote_options
@pass_globals
def gc_command(
    options: GlobalOptions,
    dest: Path | None,
    dry_run: bool,
    as_json: bool,
    remote: bool,
    remote_location: str | None,
    host: str | None,
) -> int:
    """Remove repository chunks no backup references; safe while backups run.

    Every chunk of every complete backup is marked as used; a chunk unused for the
    grace period (gc_grace in the configuration, 300 s by default) and since the start
    of the oldest backup running on any host is removed. A backup that cannot be read
    stops gc before anything is removed. `prune` runs gc itself.

    With --remote, the chunks of the remote repository that no index of any host's
    backup there names and that are older than the grace; safe while other hosts
    upload: chunks are set aside first and put back if a new backup names them
    (see engine/stores/remote_gc.py). --host does not apply: every host's backups count.
    """
    config = load_settings(options)
    # A gc run's fossils go below this host's own name whatever --host says: only its
    # own lock tells that an earlier run under that name is dead (remote_gc.py).
    offsite = remote_store(chosen_remote(remote, remote_location), None, config)
    if offsite is not None:
        state_dir = resolve_state_dir(options.state_dir)
        found = collect_remote_garbage(
            offsite.remote, state_dir, offsite.host, config.gc_grace, dry_run
        )
        print_remote_gc(found, offsite.remote.location, as_json)
        return ExitCode.OK
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
