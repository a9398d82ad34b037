"""Errors of the data path: the store, the disk streams, restore and verify.

All exit with status 1 (FAILED): a broken or missing backup, a destination that cannot
be written, a digest that does not match; except UnsafeDestination (2, a setup to fix).
"""

import errno

from virtbackup.core.errors import UsageError, VirtbackupError


class StoreError(VirtbackupError):
    """The backup destination cannot be used (missing, read-only, not a directory)."""


class UnsafeDestination(UsageError):
    """DEST or a domain directory in it can be changed by others: backups written there
    could be swapped, removed or planted (exit 2, the fix is a chown or chmod)."""


class DestinationFull(StoreError):
    """The destination filesystem ran out of space while writing."""


class BackupNotFound(VirtbackupError):
    """The named backup directory does not exist or holds no manifest."""


class CorruptBackup(VirtbackupError):
    """A manifest, index or stream cannot be read or does not match its digests."""


class SourceError(VirtbackupError):
    """A disk source cannot be read."""


class RestoreTargetExists(VirtbackupError):
    """Restore would overwrite a file and --force was not given."""


class DiskBackupFailed(VirtbackupError):
    """One or more disks of a domain failed; the backup was not kept."""


class OutputClosed(StoreError):
    """The pipe a stream is written into was closed by its reader (age, an upload), whose
    own error says why."""


class RemoteError(StoreError):
    """An rclone remote cannot be reached, written or read, or holds a bad copy."""


def write_error(err: OSError, name: object, full: StoreError | None = None) -> StoreError:
    """What a failed write of `name` means: a full filesystem or quota (`full`; by default
    the backup destination's), a read-only filesystem, a pipe whose reader went away, or
    the system's own words."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return full or DestinationFull(
            f"no space left on the backup destination while writing {name}",
            "free space there or choose another --dest",
        )
    if err.errno == errno.EROFS:
        return StoreError(f"cannot write {name}: the filesystem is read-only")
    if err.errno == errno.EPIPE:
        return OutputClosed(f"cannot write {name}: its reader is gone")
    return StoreError(f"cannot write {name}: {err.strerror}")
