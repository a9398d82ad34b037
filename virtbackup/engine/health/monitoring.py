"""What monitoring reads about a local store: the state `check` judges and the metrics
file, both from the backups in DEST and the run records beside them (run_records)."""

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from virtbackup.adapters.atomic_file import write_atomically
from virtbackup.core.check import DomainStatus, NewestBackup
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.metrics import (
    DomainMetrics,
    RepositoryMetrics,
    StoreMetrics,
    render_metrics,
)
from virtbackup.core.run_record import LastAttempt
from virtbackup.core.summary import OutcomeRow
from virtbackup.engine.health.run_records import read_attempt, record_attempts, records_dir
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.repository_usage import repository_summary
from virtbackup.engine.stores.store import BackupInfo, Store, is_domain_dir_name

log = logging.getLogger(__name__)

METRICS_MODE = 0o644  # node_exporter reads it as its own user


def after_run(
    store: LocalStore, rows: Sequence[OutcomeRow], finished: datetime, metrics_file: Path | None
) -> str | None:
    """Record each domain's attempt and rewrite the metrics file; what could not be
    written, or None."""
    attempts = [attempt_of(row, finished) for row in rows]
    try:
        record_attempts(store.dest, attempts)
    except OSError as err:
        return f"cannot record the run in {store.dest}: {err.strerror or err}"
    if metrics_file is None:
        return None
    try:
        write_atomically(metrics_file, metrics_text(store).encode(), METRICS_MODE)
    except OSError as err:
        return f"cannot write the metrics file {metrics_file}: {err.strerror or err}"
    except VirtbackupError as err:  # DEST cannot be listed (gone, unreadable)
        return f"cannot write the metrics file {metrics_file}: {err}"
    return None


def attempt_of(row: OutcomeRow, finished: datetime) -> LastAttempt:
    return LastAttempt(
        domain=row.domain,
        result=row.result,
        message=row.message,
        finished=finished.timestamp(),
        seconds=round(row.seconds, 3),
        read=row.read,
        stored=row.stored,
        backup=row.backup,
        last_success=None,  # carried over by run_records
    )


def metrics_text(store: LocalStore) -> str:
    backups = store.list_backups()
    by_domain = _good_by_domain(backups)
    recorded = _recorded_domains(store.dest)
    domains = [
        DomainMetrics(
            name,
            read_attempt(store.dest, name),
            _finished(by_domain.get(name, [])),
            len(by_domain.get(name, [])),
        )
        for name in sorted(set(by_domain) | recorded)
    ]
    total = StoreMetrics(str(store.dest), "directory", len(backups), sum(b.size for b in backups))
    summary = repository_summary(store, backups)
    repositories = []
    if summary is not None:
        repositories.append(
            RepositoryMetrics(
                str(store.dest),
                summary.chunks,
                summary.stored_bytes,
                summary.backups,
                summary.logical_bytes,
                summary.encrypted_chunks,
                summary.encrypted_bytes,
                summary.encrypted_backups,
            )
        )
    return render_metrics(domains, [total], repositories)


def domain_status(
    store: LocalStore, name: str, excluded: bool, remote: Store | None = None
) -> DomainStatus:
    """What there is about domain `name` for `check`."""
    if excluded:
        return DomainStatus(name, excluded=True)
    good = _good_by_domain(store.list_backups(name)).get(name, [])
    newest = None
    if good:
        backup = good[0]
        verified = backup.verified
        offsite = None if remote is None else _on_remote(remote, backup)
        newest = NewestBackup(
            backup.stamp,
            _finished(good) or 0.0,
            None if verified is None else verified.ok,
            verified.problem if verified is not None else None,
            offsite,
        )
    return DomainStatus(name, newest=newest, attempt=read_attempt(store.dest, name))


def _on_remote(remote: Store, backup: BackupInfo) -> bool:
    return any(
        b.stamp == backup.stamp and b.problem is None for b in remote.list_backups(backup.domain)
    )


def _good_by_domain(backups: Iterable[BackupInfo]) -> dict[str, list[BackupInfo]]:
    """Readable backups that count as their domain's, newest first per domain."""
    found: dict[str, list[BackupInfo]] = {}
    for backup in backups:
        if backup.problem is None and backup.manifest is not None:
            found.setdefault(backup.domain, []).append(backup)
    return found


def _finished(newest_first: Sequence[BackupInfo]) -> float | None:
    if not newest_first or newest_first[0].manifest is None:
        return None
    return newest_first[0].manifest.finished.timestamp()


def _recorded_domains(dest: Path) -> set[str]:
    try:
        names = [p.name for p in records_dir(dest).iterdir()]
    except FileNotFoundError:
        return set()
    domains = {name.removesuffix(".json") for name in names if name.endswith(".json")}
    return {name for name in domains if is_domain_dir_name(name)}
