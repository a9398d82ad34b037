"""`virtbackup prune --dest DIR [DOMAIN...] --keep-...`: retention, with --dry-run."""

import json
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from virtbackup.adapters.store import BackupStore
from virtbackup.cli.context import GlobalOptions, load_settings, pass_globals
from virtbackup.core.errors import UsageError
from virtbackup.core.retention import Policy
from virtbackup.engine.prune import PruneResult, prune_domain

KEEP_OPTIONS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


@click.command("prune")
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    help="Backup destination [default: `dest` of the configuration file].",
)
@click.argument("domains", nargs=-1)
@click.option("--keep-last", type=click.IntRange(min=0), metavar="N", help="The N newest.")
@click.option("--keep-daily", type=click.IntRange(min=0), metavar="N", help="Newest of N days.")
@click.option("--keep-weekly", type=click.IntRange(min=0), metavar="N", help="... of N weeks.")
@click.option("--keep-monthly", type=click.IntRange(min=0), metavar="N", help="... N months.")
@click.option("--keep-yearly", type=click.IntRange(min=0), metavar="N", help="... N years.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the decisions as JSON.")
@pass_globals
def prune_command(
    options: GlobalOptions,
    /,
    dest: Path | None,
    domains: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    **keep: int | None,
) -> None:
    """Remove old backups by a retention policy; never the newest complete one.

    The --keep-* options apply to every domain named (default: every domain in DEST);
    without them, each domain's retention from the configuration file applies. Days,
    weeks, months and years are counted in the host's local time zone.
    """
    config = load_settings(options)
    dest = dest or config.dest
    if dest is None:
        raise UsageError("no backup destination", "give --dest DIR or set dest in the config file")
    given = Policy(**{name: value or 0 for name, value in keep.items()})
    store = BackupStore(dest)
    names = domains or tuple(sorted({b.domain for b in store.list_backups()}))
    tz = datetime.now().astimezone().tzinfo
    assert tz is not None
    results = []
    for domain in names:
        policy = given if not given.is_empty() else config.for_domain(domain).retention
        if policy.is_empty():
            raise UsageError(
                f"no retention policy for {domain}",
                "give --keep-last/--keep-daily/... or set [retention] in the config file",
            )
        results.append(prune_domain(store, domain, policy, tz, dry_run=dry_run))
    if as_json:
        click.echo(json.dumps([_as_dict(r, dry_run) for r in results], indent=2))
    else:
        _print(results, dry_run)


def _as_dict(result: PruneResult, dry_run: bool) -> dict[str, object]:
    return {
        "domain": result.domain,
        "dry_run": dry_run,
        "keep": [
            {"backup": k.candidate.name, "reasons": list(k.reasons)} for k in result.decision.keep
        ],
        "remove": [c.name for c in result.decision.remove],
        "unreadable_kept": list(result.unreadable),
    }


def _print(results: list[PruneResult], dry_run: bool) -> None:
    table = Table(title="retention" + (" (dry run: nothing removed)" if dry_run else ""))
    for heading in ("domain", "backup", "action", "why"):
        table.add_column(heading)
    for result in results:
        for kept in result.decision.keep:
            table.add_row(Text(result.domain), kept.candidate.name, "keep", ", ".join(kept.reasons))
        for stamp in result.unreadable:
            table.add_row(Text(result.domain), stamp, "keep", "manifest unreadable")
        for gone in result.decision.remove:
            action = "would remove" if dry_run else "removed"
            table.add_row(Text(result.domain), gone.name, Text(action, style="red"), "")
    Console(width=max(100, Console().width)).print(table)
