"""`virtbackup clean [--dry-run]`: finish what interrupted runs left undone."""

import json
from pathlib import Path

import click

from virtbackup.adapters.hypervisor.connection import connect
from virtbackup.adapters.journal import resolve_state_dir
from virtbackup.cli.context import EXISTING_DIRECTORY, GlobalOptions, json_option, pass_globals
from virtbackup.cli.progress_view import EchoSteps
from virtbackup.core.errors import ExitCode
from virtbackup.engine.runs.clean import clean


@click.command("clean")
@click.option("--dry-run", is_flag=True, help="Show what would be undone; change nothing.")
@click.option(
    "--dest",
    "dests",
    multiple=True,
    type=EXISTING_DIRECTORY,
    help="Also remove partial backups and repository registrations that dead runs left "
    "in DIR (repeatable).",
)
@json_option("what was done")
@pass_globals
def clean_command(
    options: GlobalOptions, dry_run: bool, dests: tuple[Path, ...], as_json: bool
) -> int:
    """Undo what an interrupted run left: overlays, freezes, stopped domains, partial dirs.

    Every change a run makes to a domain is first written to a journal in the state
    directory. A journal whose run is gone is replayed here: a domain still on its
    backup overlay is merged back and switched to its original image (blockcommit
    --active --pivot, or qemu-img commit when it is shut off), the overlay deleted,
    the guest thawed, and a domain the run shut down or qemu paused started or resumed.
    """
    steps = EchoSteps(echo=not as_json)
    state_dir = resolve_state_dir(options.state_dir)
    result = clean(state_dir, connect, steps, dry_run=dry_run, dests=list(dests))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "state_dir": str(state_dir),
                    "journals": result.journals,
                    "finished": result.finished,
                    "busy": result.busy,
                    "steps": [{"domain": d, "action": t} for d, t in steps.steps],
                    "warnings": [{"domain": d, "message": t} for d, t in steps.warnings],
                    "problems": result.problems,
                    "partials": [str(p) for p in result.partials],
                    "writers": result.writers,
                },
                indent=2,
            )
        )
    elif not (result.journals or result.partials or result.busy or result.writers):
        click.echo("nothing to clean")
    elif dry_run and not steps.steps:
        click.echo("nothing would be done")
    return ExitCode.OK if result.clean else ExitCode.FAILED
