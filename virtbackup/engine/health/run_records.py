"""The run records (core/run_record) in a local store: DEST/.virtbackup-runs/<domain>.json.

They live beside the backups they describe, so that `check` and the metrics read one
place, and a run into another DEST does not speak for this one. The directory is 0700,
the files 0600; each file is replaced atomically. A record is read as untrusted: one
that is not a regular file or does not parse counts as missing, with a warning.
"""

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from virtbackup.adapters.atomic_file import write_atomically
from virtbackup.adapters.no_follow import read_regular_file
from virtbackup.core.backup_errors import CorruptBackup
from virtbackup.core.run_record import (
    MAX_RECORD_SIZE,
    LastAttempt,
    RecordFormatError,
    build_record,
    next_attempt,
    parse_record,
)
from virtbackup.engine.stores.store import RESERVED_PREFIX, check_domain_name

log = logging.getLogger(__name__)

RECORDS_DIR = f"{RESERVED_PREFIX}-runs"


def records_dir(dest: Path) -> Path:
    return dest / RECORDS_DIR


def read_attempt(dest: Path, domain: str) -> LastAttempt | None:
    """The last attempt recorded for `domain` in `dest`; None when there is none or it
    cannot be read (said as a warning)."""
    check_domain_name(domain)
    path = records_dir(dest) / f"{domain}.json"
    try:
        return parse_record(read_regular_file(path, MAX_RECORD_SIZE).decode(), domain)
    except FileNotFoundError:
        return None
    except (OSError, CorruptBackup, RecordFormatError, UnicodeDecodeError) as err:
        log.warning("run record %s ignored: %s", path, getattr(err, "strerror", None) or err)
        return None


def record_attempts(dest: Path, attempts: Sequence[LastAttempt]) -> None:
    """Write each domain's record, carrying its last success over. OSError when DEST
    cannot take them."""
    directory = records_dir(dest)
    directory.mkdir(mode=0o700, exist_ok=True)
    if directory.is_symlink() or not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a symbolic link or not a directory")
    os.chmod(directory, 0o700)
    for attempt in attempts:
        check_domain_name(attempt.domain)
        record = next_attempt(read_attempt(dest, attempt.domain), attempt)
        write_atomically(directory / f"{attempt.domain}.json", build_record(record).encode())
