"""Retention applied to the store: which complete backups of a domain go, and removing them.

Only complete backups with a readable manifest are candidates; partial directories and
anything the store does not recognise are never touched. A stamp directory that is not a
readable backup (no manifest, a damaged one, a FIFO in its place, ...) is left alone and
reported with its problem: we cannot tell its age or what it holds, and it does not stop
the others from being pruned. So is a backup that is not one of its domain's (its
manifest names another domain, or its time lies in the future). A backup whose last
verification FAILED is a candidate known to be bad: it never fills a keep slot
(core/retention says how it is kept or removed); so is, with `allowed_signers` given, a
backup whose signature is missing or bad. The policy itself is core/retention.
"""

import logging
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path

from virtbackup.adapters.store import BackupInfo, BackupStore
from virtbackup.core.backup_errors import CorruptBackup, RemoteError
from virtbackup.core.retention import Candidate, Decision, Policy, apply_policy
from virtbackup.core.signature import SignatureState
from virtbackup.engine.stores.backup_access import BackupFiles, LocalFiles, check_signatures

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneResult:
    domain: str
    decision: Decision
    unreadable: tuple[str, ...]  # stamp directories left alone: not a readable backup
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
    store: BackupStore,
    domain: str,
    policy: Policy,
    tz: tzinfo,
    *,
    dry_run: bool = False,
    allowed_signers: Path | None = None,
) -> PruneResult:
    backups = store.list_backups(domain)
    by_stamp: dict[str, BackupInfo] = {b.stamp: b for b in backups}
    candidates = [
        candidate_of(b, LocalFiles(Path(b.path)), allowed_signers)
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
    decision = apply_policy(candidates, policy, tz)
    removed: list[str] = []
    if not dry_run:
        for candidate in decision.remove:
            path = by_stamp[candidate.name].path
            assert isinstance(path, Path), "the local store lists directories"
            store.remove_backup(path)
            log.info("%s: removed backup %s (retention)", domain, candidate.name)
            removed.append(candidate.name)
    return PruneResult(domain, decision, tuple(problems), tuple(removed), problems=problems)
