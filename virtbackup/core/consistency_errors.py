"""Errors of the consistency layer: snapshots, overlays, freeze, shutdown and undo.

All exit with status 1 (FAILED) except where a class says otherwise: the domain they
name was returned to its state, or the message says what is left and that
`virtbackup clean` finishes it.
"""

from virtbackup.core.errors import UsageError, VirtbackupError


class ConsistencyError(VirtbackupError):
    """A domain could not be made safe to read; nothing of it was changed."""


class UnsupportedDisk(UsageError):
    """A disk asked for cannot be handled by the method (no local file or device)."""


class OverlaySpaceError(ConsistencyError):
    """The directory for the snapshot overlays lacks space or cannot be written."""


class SnapshotFailed(ConsistencyError):
    """libvirt refused or failed to create the external overlays."""


class QuiesceFailed(ConsistencyError):
    """Quiescing was required and the guest agent could not freeze the filesystems."""


class CommitFailed(VirtbackupError):
    """An overlay could not be merged back; the domain still runs on it (see clean)."""


class ShutdownTimeout(ConsistencyError):
    """The guest did not shut down in time and forcing it off was not asked for."""


class DomainChanged(ConsistencyError):
    """The domain is not as planned any more (gone, started, stopped, a disk replaced)."""


class ConsistencyLost(VirtbackupError):
    """A shut-off domain was started while its images were being read."""


class UndoIncomplete(VirtbackupError):
    """Something a run changed could not be undone; the journal keeps it for clean."""


class LeftoversRemain(VirtbackupError):
    """An interrupted run left changes on the domain that could not be undone yet."""
