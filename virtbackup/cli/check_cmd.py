"""`virtbackup check [DOMAIN...]`: a monitoring plugin (Icinga, Nagios, Checkmk, ...).

Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; the first line is the status, then one
line per domain; performance data after `|` (see core/check.py for what is judged).
Every error, a bad option included, is UNKNOWN: a plugin's exit 2 would read CRITICAL.
"""

import time
from pathlib import Path
from typing import Any

import click

from virtbackup.adapters.hypervisor.connection import connect
from virtbackup.cli.context import (
    GlobalOptions,
    chosen_dest,
    dest_option,
    load_settings,
    pass_globals,
)
from virtbackup.cli.remote_options import remote_store
from virtbackup.core.check import (
    Limits,
    PluginOutput,
    State,
    judge,
    parse_duration,
    plugin_output,
    unknown_output,
)
from virtbackup.core.errors import UsageError, VirtbackupError
from virtbackup.core.planning import select_domains
from virtbackup.engine.health.monitoring import domain_status
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.store import check_domain_name


class PluginCommand(click.Command):
    """Bad options are UNKNOWN (exit 3) in the plugin's one line, not click's exit 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as err:
            click.echo(unknown_output(err.format_message()).text)
            raise click.exceptions.Exit(State.UNKNOWN) from None


@click.command("check", cls=PluginCommand)
@click.argument("domains", nargs=-1)
@dest_option()
@click.option(
    "--max-age",
    default="26h",
    show_default=True,
    metavar="DURATION",
    help="A newest backup older than this is CRITICAL (26h, 2d, 90m, 1d12h).",
)
@click.option("--warn-age", metavar="DURATION", help="A newest backup older than this is WARNING.")
@click.option("--require-verified", is_flag=True, help="A newest backup not verified is WARNING.")
@click.option("--remote", is_flag=True, help="A newest backup without its offsite copy is WARNING.")
@pass_globals
def check_command(options: GlobalOptions, /, domains: tuple[str, ...], **given: Any) -> int:
    """Check the backups of every domain of the host (or of the named ones) as a
    monitoring plugin: age of the newest complete backup, whether the last run of the
    domain failed, whether the backup verified and, with --remote, whether its offsite
    copy exists. A domain of the host without a backup is CRITICAL unless the
    configuration excludes it."""
    try:
        output = _check(options, domains, **given)
    except VirtbackupError as err:
        output = unknown_output(str(err))
    click.echo(output.text)
    return int(output.state)


def _check(
    options: GlobalOptions,
    named: tuple[str, ...],
    dest: Path | None,
    max_age: str,
    warn_age: str | None,
    require_verified: bool,
    remote: bool,
) -> PluginOutput:
    limits = Limits(
        _duration("--max-age", max_age),
        None if warn_age is None else _duration("--warn-age", warn_age),
        require_verified,
    )
    if (problem := limits.problem()) is not None:
        raise UsageError(problem)
    config = load_settings(options)
    dest = chosen_dest(dest, config)
    if not dest.is_dir():  # also when no domain would look into it
        raise UsageError(f"backup destination {dest} does not exist or is not a directory")
    store = LocalStore(dest)
    offsite = remote_store("" if remote else None, None, config)
    with connect(options.uri, readonly=True) as conn:
        host = conn.domain_names()
    selected = set(select_domains(host, (), config.include, config.exclude))
    for name in named:
        check_domain_name(name)
        if name not in host and not (dest / name).is_dir():
            raise UsageError(f"unknown domain {name!r}: not on this host and no backups in {dest}")
    statuses = [
        domain_status(store, name, name in host and name not in selected, offsite)
        for name in named or host
    ]
    now = time.time()
    return plugin_output([judge(status, limits, now) for status in statuses], limits)


def _duration(option: str, text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise UsageError(f"{option}: {err}") from None
