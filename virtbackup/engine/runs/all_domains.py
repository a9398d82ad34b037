"""What `virtbackup all` adds around each domain's backup (runs/domain_loop runs the
domains): its hooks and retention. A failure of one domain is its outcome; the next
domain is still done.

Per domain:  before hook -> backup -> retention (only after a complete new backup;
             on the remote under the domain's lock) -> after hook (always, told the result)

Hooks are argument lists from the configuration, run without a shell, with
VIRTBACKUP_PHASE (before/after), VIRTBACKUP_DOMAIN, VIRTBACKUP_DEST, VIRTBACKUP_METHOD
and, after, VIRTBACKUP_RESULT (ok/failed/locked/skipped) and VIRTBACKUP_BACKUP (the
new backup's directory, when there is one) in their environment. A failing before hook
skips the domain's backup and fails it; a failing after hook fails the domain too.
"""

import logging
from dataclasses import dataclass, replace
from datetime import tzinfo
from pathlib import Path

from virtbackup.adapters import runner
from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.journal import resolve_state_dir
from virtbackup.adapters.locks import domain_lock
from virtbackup.core.config import DomainSettings
from virtbackup.core.errors import Interrupted, VirtbackupError
from virtbackup.core.model import DomainFacts
from virtbackup.core.progress import ProgressSink, StepSink
from virtbackup.engine.methods.image_source import ImageSource
from virtbackup.engine.runs.domain_backup import DomainJob, DomainOutcome, Result, back_up_domain
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.remote import RemoteStore
from virtbackup.engine.stores.retention import prune_domain

log = logging.getLogger(__name__)

HOOK_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Hooks:
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class DomainReport:
    outcome: DomainOutcome
    pruned: tuple[str, ...] = ()
    pruned_remote: tuple[str, ...] = ()  # removed from the remote (retention, leftovers)


@dataclass(frozen=True)
class AllExtras:
    """What `all` adds around each domain's backup."""

    hooks: Hooks
    tz: tzinfo  # retention's calendar days
    allowed_signers: Path | None = None  # retention counts only backups signed by one


def back_up_with_extras(
    conn: Hypervisor,
    job: DomainJob,
    store: LocalStore,
    extras: AllExtras,
    progress: ProgressSink,
    steps: StepSink,
    lvm: ImageSource,
) -> DomainReport:
    """One domain of `all`: before hook, backup, retention, after hook."""
    plan, run_options, settings = job.plan, job.options, job.settings
    facts, tz, allowed_signers = plan.domain, extras.tz, extras.allowed_signers
    method = plan.method.value if plan.method else "none"
    env = {
        "VIRTBACKUP_DOMAIN": facts.name,
        "VIRTBACKUP_DEST": str(store.dest),
        "VIRTBACKUP_METHOD": method,
    }
    problem = _hook(extras.hooks.before, {**env, "VIRTBACKUP_PHASE": "before"})
    if problem:
        outcome = DomainOutcome(facts.name, Result.FAILED, f"before hook failed: {problem}", method)
    else:
        outcome = back_up_domain(conn, plan, store, run_options, progress, steps, lvm)

    pruned: tuple[str, ...] = ()
    if outcome.result == Result.OK and not settings.retention.is_empty():
        try:
            pruning = prune_domain(
                store, facts.name, settings.retention, tz, allowed_signers=allowed_signers
            )
            pruned = pruning.removed
            left = tuple(f"left alone by retention: {why}" for why in pruning.problems.values())
            outcome = replace(outcome, warnings=outcome.warnings + left)
        except Interrupted:
            raise  # SIGINT/SIGTERM end the run, not just this domain
        except VirtbackupError as err:
            outcome = replace(outcome, result=Result.FAILED, message=f"retention failed: {err}")
    pruned_remote: tuple[str, ...] = ()
    if outcome.result == Result.OK and run_options.offsite is not None:
        try:
            pruned_remote = prune_offsite(
                run_options.offsite,
                facts,
                settings,
                tz,
                store,
                run_options.state_dir,
                allowed_signers,
            )
        except Interrupted:
            raise  # SIGINT/SIGTERM end the run, not just this domain
        except VirtbackupError as err:
            outcome = replace(
                outcome, result=Result.FAILED, message=f"remote retention failed: {err}"
            )

    after_env = {**env, "VIRTBACKUP_PHASE": "after", "VIRTBACKUP_RESULT": outcome.result.value}
    if outcome.backup is not None:
        after_env["VIRTBACKUP_BACKUP"] = str(outcome.backup)
    problem = _hook(extras.hooks.after, after_env)
    if problem:
        outcome = replace(outcome, result=Result.FAILED, message=f"after hook failed: {problem}")
    return DomainReport(outcome, pruned, pruned_remote)


def prune_offsite(
    remote: RemoteStore,
    facts: DomainFacts,
    settings: DomainSettings,
    tz: tzinfo,
    store: LocalStore,
    state_dir: Path | None,
    allowed_signers: Path | None = None,
) -> tuple[str, ...]:
    """Retention on the remote for one domain, under the domain's lock: a `backup DOMAIN`
    started by hand meanwhile may be uploading, and its files would look like the
    leftover of an interrupted upload. When the lock is taken, retention waits for the
    next run. The stamps removed."""
    lock = domain_lock(resolve_state_dir(state_dir), facts.uuid, facts.name)
    if not lock.try_acquire():
        log.info("%s: remote retention left for the next run: the domain is in use", facts.name)
        return ()
    with lock:
        # Local backups not yet complete on the remote are uploads to resume, not leftovers.
        pending = set() if remote.only else _local_stamps(store, facts.name)
        pruned = prune_domain(
            remote, facts.name, settings.retention, tz, allowed_signers=allowed_signers
        )
        return (*pruned.removed, *remote.remove_leftovers(facts.name, pending))


def _local_stamps(store: LocalStore, domain: str) -> set[str]:
    return {backup.stamp for backup in store.list_backups(domain)}


def _hook(argv: tuple[str, ...], env: dict[str, str]) -> str | None:
    """Run a hook; None when it succeeded (or there is none), else why it failed."""
    if not argv:
        return None
    try:
        runner.run(list(argv), env=env, timeout=HOOK_TIMEOUT)
    except Interrupted:
        raise  # SIGINT/SIGTERM end the run, not just this domain
    except VirtbackupError as err:
        return str(err)
    except OSError as err:
        return f"{argv[0]}: {err.strerror}"
    return None
