"""`virtbackup prune --dest DIR [DOMAIN...] --keep-...`: retention, with --dry-run;
with --remote on this host's offsite copies instead."""

import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import click

from virtbackup.cli.context import (
    GlobalOptions,
    chosen_dest,
    dest_option,
    load_settings,
    pass_globals,
)
from virtbackup.cli.gc_cmd import gc_exit_code
from virtbackup.cli.gc_view import gc_as_json, print_gc
from virtbackup.cli.prune_view import print_decisions
from virtbackup.cli.remote_options import chosen_remote, remote_options, remote_store
from virtbackup.cli.trust_options import allowed_signers_option
from virtbackup.core.errors import UsageError, VirtbackupError
from virtbackup.core.retention import Policy
from virtbackup.engine.stores.gc import GcResult, GcSettings, collect_after_retention
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.retention import PruneResult, prune_domain

KEEP_OPTIONS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


@click.command("prune")
@dest_option("Backup destination")
@click.argument("domains", nargs=-1)
@click.option("--keep-last", type=click.IntRange(min=0), metavar="N", help="The N newest.")
@click.option("--keep-daily", type=click.IntRange(min=0), metavar="N", help="Newest of N days.")
@click.option("--keep-weekly", type=click.IntRange(min=0), metavar="N", help="... of N weeks.")
@click.option("--keep-monthly", type=click.IntRange(min=0), metavar="N", help="... N months.")
@click.option("--keep-yearly", type=click.IntRange(min=0), metavar="N", help="... N years.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the decisions as JSON.")
@remote_options
@allowed_signers_option
@pass_globals
def prune_command(
    options: GlobalOptions,
    /,
    dest: Path | None,
    domains: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    remote: bool,
    remote_location: str | None,
    host: str | None,
    allowed_signers: Path | None,
    **keep: int | None,
) -> int:
    """Remove old backups by a retention policy; never the newest complete one.

    The --keep-* options apply to every domain named (default: every domain in DEST);
    without them, each domain's retention from the configuration file applies. Days,
    weeks, months and years are counted in the host's local time zone.

    With --remote the policy applies to the complete offsite copies of this host (or
    --host) instead; uploads that are not complete are left to `virtbackup all`, which
    knows which of them are still to be resumed.

    With allowed_signers, a backup without a good signature by one of its keys never
    counts towards a --keep-* rule (like one whose verification failed).

    When DEST holds a repository, gc follows (see `virtbackup gc`); with --dry-run it
    says what would be freed once the backups to be removed are gone, and --json then
    prints {"retention": [...], "gc": {...}}.
    """
    signers = allowed_signers
    config = load_settings(options)
    signers = signers or config.allowed_signers
    given = Policy(**{name: value or 0 for name, value in keep.items()})

    def policy_of(domain: str) -> Policy:
        policy = given if not given.is_empty() else config.for_domain(domain).retention
        if policy.is_empty():
            raise UsageError(
                f"no retention policy for {domain}",
                "give --keep-last/--keep-daily/... or set [retention] in the config file",
            )
        return policy

    tz = datetime.now().astimezone().tzinfo
    assert tz is not None
    gc: GcResult | None = None
    gc_error: VirtbackupError | None = None
    offsite = remote_store(chosen_remote(remote, remote_location), host, config)
    if offsite is not None:
        policies = {name: policy_of(name) for name in domains or offsite.domains()}
        results = [
            replace(
                prune_domain(offsite, name, policy, tz, dry_run=dry_run, allowed_signers=signers),
                incomplete=tuple(offsite.backups_of(name).incomplete),
            )
            for name, policy in policies.items()
        ]
        where = offsite.label
    else:
        dest = chosen_dest(dest, config)
        store = LocalStore(dest)
        names = domains or sorted({b.domain for b in store.list_backups()})
        policies = {name: policy_of(name) for name in names}  # all known before any removal
        results = [
            prune_domain(store, name, policy, tz, dry_run=dry_run, allowed_signers=signers)
            for name, policy in policies.items()
        ]
        where = store.label
        pruned = {(r.domain, gone.name) for r in results for gone in r.decision.remove}
        try:
            gc = collect_after_retention(
                dest, GcSettings(grace=config.gc_grace, dry_run=dry_run), pruned
            )
        except VirtbackupError as err:  # retention is done: report it, then this
            gc_error = err
    decisions = [_as_dict(r, dry_run, where) for r in results]
    if as_json and (gc is not None or gc_error is not None):
        collected = gc_as_json(gc, where, config.gc_grace) if gc else {"error": str(gc_error)}
        click.echo(json.dumps({"retention": decisions, "gc": collected}, indent=2))
    elif as_json:
        click.echo(json.dumps(decisions, indent=2))
    else:
        print_decisions(results, dry_run, where)
        if gc is not None:
            print_gc(gc, where, config.gc_grace)
    if gc_error is not None:
        raise gc_error
    return gc_exit_code(gc)


def _as_dict(result: PruneResult, dry_run: bool, where: str) -> dict[str, object]:
    return {
        "domain": result.domain,
        "where": where,
        "dry_run": dry_run,
        "keep": [
            {"backup": k.candidate.name, "reasons": list(k.reasons)} for k in result.decision.keep
        ],
        "remove": [c.name for c in result.decision.remove],
        "unreadable_kept": list(result.unreadable),
        "problems": dict(result.problems),
        "incomplete_kept": list(result.incomplete),
    }
