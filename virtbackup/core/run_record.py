"""The record a run leaves for each domain it touched: how its last attempt ended.

Monitoring needs to know whether the last run of a domain failed, also when that run
was a `backup DOMAIN` by hand and not the nightly `all`, and what the last successful
one was. Each run of `backup` and `all` writes one small JSON file per domain
(engine/health/run_records.py keeps them beside the backups,
DEST/.virtbackup-runs/<domain>.json):

    {"version": 1, "domain": "web1", "result": "failed", "message": "...",
     "finished": 1767139200.0, "seconds": 12.5, "read": 0, "stored": 0,
     "backup": null, "last_success": 1767052800.0}

Times are Unix seconds (UTC). `last_success` is when the newest successful attempt
ended, carried over from the previous record while attempts fail. The file is written
by us but read as untrusted like every file in DEST: a record that does not parse is
treated as missing.
"""

import json
import sys
from dataclasses import dataclass, replace
from typing import Any

RECORD_VERSION = 1
# Every result of a domain's attempt (engine/runs/domain_backup.Result), in the order
# metrics list them.
RESULTS = ("ok", "failed", "incomplete", "locked", "skipped", "interrupted")
# Results that mean the run failed the domain (exit 1 or 130), as opposed to a domain
# another run held or one with nothing to back up.
FAILED_RESULTS = frozenset({"failed", "incomplete", "interrupted"})
MAX_RECORD_SIZE = 64 * 1024


class RecordFormatError(ValueError):
    """A run record that is not one of ours."""


@dataclass(frozen=True)
class LastAttempt:
    domain: str
    result: str  # one of RESULTS
    message: str
    finished: float  # Unix time the attempt ended
    seconds: float  # how long it took
    read: int  # uncompressed bytes of the disks backed up
    stored: int  # bytes written to the store
    backup: str | None  # the new backup, when there is one
    last_success: float | None  # Unix time the newest successful attempt ended

    @property
    def failed(self) -> bool:
        return self.result in FAILED_RESULTS


def next_attempt(previous: LastAttempt | None, attempt: LastAttempt) -> LastAttempt:
    """`attempt` with the last success carried over from `previous` when it failed."""
    if attempt.result == "ok":
        return replace(attempt, last_success=attempt.finished)
    return replace(attempt, last_success=previous.last_success if previous else None)


def build_record(attempt: LastAttempt) -> str:
    return json.dumps({"version": RECORD_VERSION, **attempt.__dict__}, indent=2) + "\n"


def parse_record(text: str, domain: str) -> LastAttempt:
    """The record of `domain`; RecordFormatError when it is not one."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise RecordFormatError("not JSON") from None
    if not isinstance(document, dict) or document.get("version") != RECORD_VERSION:
        raise RecordFormatError(f"not a version {RECORD_VERSION} run record")
    if document.get("domain") != domain:
        raise RecordFormatError(f"it is not the record of {domain!r}")
    if document.get("result") not in RESULTS:
        raise RecordFormatError("its result is unknown")
    return LastAttempt(
        domain=domain,
        result=document["result"],
        message=_typed(document, "message", str),
        finished=_time(document, "finished"),
        seconds=_number(document, "seconds"),
        read=_count(document, "read"),
        stored=_count(document, "stored"),
        backup=_optional(document, "backup", str),
        last_success=_time(document, "last_success") if document.get("last_success") else None,
    )


def _typed(document: dict[str, Any], key: str, kind: type) -> Any:
    value = document.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RecordFormatError(f"{key!r} is not of type {kind.__name__}")
    return value


def _optional(document: dict[str, Any], key: str, kind: type) -> Any:
    return None if document.get(key) is None else _typed(document, key, kind)


def _number(document: dict[str, Any], key: str) -> float:
    value = document.get(key)
    # bounded before float(): a JSON integer may have hundreds of digits, and JSON as
    # Python reads it may say Infinity or NaN
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= sys.float_info.max
    ):
        raise RecordFormatError(f"{key!r} is not a number of 0 or more")
    return float(value)


def _time(document: dict[str, Any], key: str) -> float:
    value = _number(document, key)
    if value > 1 << 40:
        raise RecordFormatError(f"{key!r} is not a Unix time")
    return value


def _count(document: dict[str, Any], key: str) -> int:
    value: int = _typed(document, key, int)
    if value < 0:
        raise RecordFormatError(f"{key!r} is negative")
    return value
