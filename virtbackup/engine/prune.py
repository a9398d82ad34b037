"""Retention applied to the store: which complete backups of a domain go, and removing them.

Only complete backups with a readable manifest are candidates; partial directories and
anything the store does not recognise are never touched, and a backup whose manifest
cannot be read is kept (we cannot tell its age). The policy itself is core/retention.
"""

import logging
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path

from virtbackup.adapters.store import BackupInfo, BackupStore
from virtbackup.core.retention import Candidate, Decision, Policy, apply_policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneResult:
    domain: str
    decision: Decision
    unreadable: tuple[str, ...]  # backups kept because their manifest cannot be read
    removed: tuple[str, ...]  # stamps actually removed (none in a dry run)
    incomplete: tuple[str, ...] = ()  # remote uploads not complete: never candidates


def prune_domain(
    store: BackupStore, domain: str, policy: Policy, tz: tzinfo, *, dry_run: bool = False
) -> PruneResult:
    backups = store.list_backups(domain)
    by_stamp: dict[str, BackupInfo] = {b.stamp: b for b in backups}
    candidates = [Candidate(b.stamp, b.manifest.started) for b in backups if b.manifest is not None]
    unreadable = tuple(b.stamp for b in backups if b.manifest is None)
    decision = apply_policy(candidates, policy, tz)
    removed: list[str] = []
    if not dry_run:
        for candidate in decision.remove:
            path = by_stamp[candidate.name].path
            assert isinstance(path, Path), "the local store lists directories"
            store.remove_backup(path)
            log.info("%s: removed backup %s (retention)", domain, candidate.name)
            removed.append(candidate.name)
    return PruneResult(domain, decision, unreadable, tuple(removed))
