"""Errors of the data path: the store, the disk streams, restore and verify.

All exit with status 1 (FAILED): a broken or missing backup, a destination that cannot
be written, a digest that does not match; except UnsafeDestination (2, a setup to fix).
"""

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
