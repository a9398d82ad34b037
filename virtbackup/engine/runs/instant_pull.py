"""Finishing an instant restore (`restore --instant`): the domain runs on a qcow2 overlay
whose backing is a backup's disk served over NBD; the backing data is copied into the
overlay while the guest runs (a block pull), after which the overlay stands alone and the
server can stop.

The same code finishes the pull in the run that started the domain and, after a kill -9,
in `clean`: it looks at what is true now. The server dies with the run that started it,
so a dead run's export is served again on the same socket before the pull restarts (qemu
reconnects to it). A domain that is shut off gets its overlay made standalone offline
(`qemu-img rebase` onto nothing copies the backing data in).
"""

import os
import socket as sockets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from virtbackup.adapters import images
from virtbackup.adapters.hypervisor.connection import Hypervisor
from virtbackup.adapters.hypervisor.domain import Domain
from virtbackup.adapters.images import image_info
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.progress import NullProgress, ProgressSink
from virtbackup.core.undo import InstantPullRecord
from virtbackup.engine.datapath.nbd_serve import serving_backup
from virtbackup.engine.stores.backup_access import NO_SIGNERS

POLL_SECONDS = 0.25


class InstantPullFailed(VirtbackupError):
    """The backing data could not be copied into the overlay."""


def finish_instant_pull(
    hypervisor: Hypervisor,
    domain_uuid: str,
    record: InstantPullRecord,
    progress: ProgressSink | None = None,
    *,
    serving: bool = False,
) -> None:
    """Leave the disk of `record` on its overlay alone, whatever state the domain is in;
    InstantPullFailed with how to recover when that cannot be done. `serving`: this
    process serves the backup on the record's socket; otherwise a server found there is
    a dead run's, which stops serving when its parent dies."""
    dom = hypervisor.find(domain_uuid)
    if dom is not None and dom.is_active():
        disk = dom.live_disks().get(record.target)
        if disk is None or disk.path != record.overlay:
            raise InstantPullFailed(
                f"{dom.name} {record.target} no longer runs on {record.overlay}: left alone"
            )
        if disk.backing_chain:
            with export_alive(record, reuse=serving):
                if not serving and dom.block_job_progress(record.target) is None:
                    # qemu does not connect again to a server that went away: make it
                    # open its disks anew, with the guest saved and restored around that.
                    dom.save_and_restart()
                pull(dom, record.target, progress or NullProgress())
    elif (
        os.path.exists(record.overlay)
        and image_info(record.overlay, "qcow2", force_share=True).backing_file
    ):
        with export_alive(record, reuse=serving):
            images.rebase_standalone(Path(record.overlay))
    _remove_socket_dir(Path(record.socket).parent)


def pull(dom: Domain, target: str, progress: ProgressSink) -> None:
    """Copy the backing data of `target` into its top image (a job a dead run started
    is waited for), showing progress; InstantPullFailed if the job ends before that."""
    if dom.block_job_progress(target) is None:
        dom.start_block_pull(target)
    started, done = False, 0
    while (state := dom.block_job_progress(target)) is not None:
        current, total = state
        if not started and total:
            progress.on_start(total, target)
            started = True
        if started and current > done:
            progress.on_advance(current - done)
            done = current
        time.sleep(POLL_SECONDS)
    if started:
        progress.on_done()
    if dom.live_disks()[target].backing_chain:
        raise InstantPullFailed(
            f"copying the backup's data into {dom.name} {target} stopped before the end "
            f"(the backup could not be read)",
            "run 'virtbackup clean' to serve the backup again and finish it",
        )


@contextmanager
def export_alive(record: InstantPullRecord, *, reuse: bool) -> Iterator[None]:
    """The record's backup served on its socket for the block: with `reuse`, the running
    server if one answers there; else a new one (a server left there is unnamed first)."""
    socket = Path(record.socket)
    if reuse and _answers(socket):
        yield
        return
    backup = Path(record.backup)
    if not backup.is_dir():
        raise InstantPullFailed(
            f"the backup {backup} that {record.overlay} reads from is gone",
            f"put it back and run 'virtbackup clean'; until then {record.target} "
            "reads errors where it was not copied",
        )
    socket.unlink(missing_ok=True)  # a dead run's server keeps serving those connected
    directory = qemu_socket_dir(socket.parent)
    identity = Path(record.identity) if record.identity else None
    with serving_backup(backup, directory, identity, NO_SIGNERS, [record.target]) as served:
        for disk in served:
            hand_to_qemu(disk.server.socket)
        yield


def qemu_socket_dir(path: Path) -> Path:
    """`path` created (if need be) for sockets qemu's user reaches, private to it."""
    owner = os.stat(path.parent)
    path.mkdir(mode=0o700, exist_ok=True)
    os.chown(path, owner.st_uid, owner.st_gid)
    return path


def hand_to_qemu(socket: Path) -> None:
    """Let qemu's user (the owner of the directory) connect to `socket`."""
    owner = os.stat(socket.parent)
    os.chown(socket, owner.st_uid, owner.st_gid)
    os.chmod(socket, 0o600)


def _answers(path: Path) -> bool:
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except FileNotFoundError:
        return False
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as client:
        try:
            client.connect(str(path))
        except OSError:
            return False
    return True


def _remove_socket_dir(path: Path) -> None:
    for leftover in path.glob("*") if path.is_dir() else ():
        leftover.unlink(missing_ok=True)
    if path.is_dir():
        path.rmdir()
