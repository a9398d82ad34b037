"""The run summary as data: what `backup --json` prints and `all` writes into DEST."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from virtbackup.core.json_fields import format_time

SUMMARY_VERSION = 1


@dataclass(frozen=True)
class OutcomeRow:
    """One domain's line of the summary (built from the engine's DomainOutcome)."""

    domain: str
    result: str  # ok, failed, locked, skipped, incomplete, interrupted
    message: str
    method: str | None
    disks: int
    read: int
    stored: int
    seconds: float
    backup: str | None
    warnings: tuple[str, ...] = ()
    pruned: tuple[str, ...] = ()  # backups removed by retention after this one
    pruned_remote: tuple[str, ...] = ()  # the same on the remote
    reclaimed: int | None = None  # bytes --trim freed in the host images; None: no trim
    offsite: str | None = None  # None: no remote; copied, streamed, failed
    left_out: tuple[str, ...] = ()  # "target: reason" of disks the backup misses
    excluded: tuple[str, ...] = ()  # targets left out by exclude_disks

    @property
    def ratio(self) -> float | None:
        """Uncompressed bytes per stored byte (how much smaller the backup is)."""
        return self.read / self.stored if self.stored else None


def summary_document(
    rows: Sequence[OutcomeRow],
    *,
    host: str,
    dest: str,
    started: datetime,
    finished: datetime,
    exit_code: int,
) -> dict[str, Any]:
    return {
        "version": SUMMARY_VERSION,
        "host": host,
        "dest": dest,
        "started": format_time(started),
        "finished": format_time(finished),
        "exit_code": exit_code,
        "domains": [
            {
                "domain": r.domain,
                "result": r.result,
                "message": r.message,
                "method": r.method,
                "disks": r.disks,
                "read": r.read,
                "stored": r.stored,
                "ratio": round(r.ratio, 3) if r.ratio is not None else None,
                "seconds": round(r.seconds, 3),
                "backup": r.backup,
                "warnings": list(r.warnings),
                "pruned": list(r.pruned),
                "pruned_remote": list(r.pruned_remote),
                "trim_reclaimed": r.reclaimed,
                "offsite": r.offsite,
                "left_out": list(r.left_out),
                "excluded": list(r.excluded),
            }
            for r in rows
        ],
    }
