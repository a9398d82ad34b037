"""Retention applied to a store: which complete backups of a domain go, and removing them.

The same for every store (stores/store.Store). Only complete backups with a readable
manifest are candidates; partial directories, interrupted uploads and anything the store
does not recognise are never touched. A backup that is not readable (no manifest, a
damaged one, a FIFO in its place, ...) is left alone and reported with its problem: we
cannot tell its age or what it holds, and it does not stop the others from being pruned.
So is a backup that is not one of its domain's (its manifest names another domain, or
its time lies in the future). A backup whose last verification FAILED is a candidate
known to be bad: it never fills a keep slot (core/retention says how it is kept or
removed); so is, with `allowed_signers` given, a backup whose signature is missing or
bad. The policy itself is core/retention.

A backup's time is its manifest's `started`, in every store: the moment its data was
taken, recorded (and signed) inside the backup, so a copy renamed or moved by hand
still counts by when it was made. Its stamp says the same for every backup we write,
and one whose stamp and start disagree far enough to lie in the future is not counted.
"""

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path

from virtbackup.core.backup_errors import CorruptBackup, RemoteError
from virtbackup.core.retention import Candidate, Decision, Kept, Policy, apply_policy
from virtbackup.core.signature import SignatureState
from virtbackup.engine.stores.backup_access import check_signatures
from virtbackup.engine.stores.store import BackupFiles, BackupInfo, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneResult:
    domain: str
    decision: Decision
    unreadable: tuple[str, ...]  # stamps left alone: not a readable backup of the domain
    removed: tuple[str, ...]  # stamps actually removed (none in a dry run)
    incomplete: tuple[str, ...] = ()  # remote uploads not complete: never candidates
    problems: dict[str, str] = field(default_factory=dict)  # unreadable stamp: why


def candidate_of(
    backup: BackupInfo, files: BackupFiles, allowed_signers: Path | None = None
) -> Candidate:
    """A readable backup as retention sees it; with `allowed_signers`, one without a
    good signature by them is known bad, as one whose verification failed."""
    assert backup.manifest is not None, "only readable backups are candidates"
    when = backup.manifest.started
    if backup.verified is not None and not backup.verified.ok:
        return Candidate(backup.stamp, when, failed=True)
    if allowed_signers is not None:
        try:
            check = check_signatures(files, allowed_signers)
        except (CorruptBackup, RemoteError) as err:
            return Candidate(backup.stamp, when, failed=True, flaw=f"BAD signature ({err.message})")
        if check.state != SignatureState.SIGNED:
            return Candidate(backup.stamp, when, failed=True, flaw=check.describe())
    return Candidate(backup.stamp, when)


def prune_domain(
    store: Store,
    domain: str,
    policy: Policy,
    tz: tzinfo,
    *,
    dry_run: bool = False,
    allowed_signers: Path | None = None,
    now: datetime | None = None,
) -> PruneResult:
    """Apply `policy` to the complete backups of `domain` in `store` (the newest is always
    kept; an empty policy keeps every one)."""
    backups = store.list_backups(domain, now or datetime.now(UTC))
    candidates = [
        candidate_of(b, store.files(domain, b.stamp), allowed_signers)
        for b in backups
        if b.manifest is not None and b.problem is None
    ]
    problems = {
        b.stamp: b.problem or "unreadable"
        for b in backups
        if b.manifest is None or b.problem is not None
    }
    for problem in problems.values():
        log.warning("%s: %s; left alone by retention", domain, problem)
    if policy.is_empty():
        decision = Decision(keep=[Kept(c, ("no policy",)) for c in candidates])
    else:
        decision = apply_policy(candidates, policy, tz)
    removed: list[str] = []
    if not dry_run:
        for candidate in decision.remove:
            store.remove(domain, candidate.name)
            log.info(
                "%s: removed backup %s from %s (retention)", domain, candidate.name, store.label
            )
            removed.append(candidate.name)
    return PruneResult(domain, decision, tuple(problems), tuple(removed), problems=problems)
