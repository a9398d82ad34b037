"""A backup's disks served read-only over NBD, each by nbdkit running our plugin
(nbdkit_plugin.py) on a unix socket, for `export --nbd`, `files` and `mount`.

The backup is opened and each served disk's index checked here first, so that a bad
backup, a missing identity or an unknown disk is one line before any server starts; the
plugin then opens the same backup again in nbdkit's process and serves it.
"""

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters.nbdkit_server import (
    NbdkitError,
    NbdkitServer,
    nbdkit_serving,
    socket_dir,
)
from virtbackup.core.errors import UsageError
from virtbackup.core.qcow2_refs import HEAD_BYTES, ImageReferences, qcow2_references
from virtbackup.engine.datapath.disk_reader import disk_reader, find_disk
from virtbackup.engine.stores.backup_access import NO_SIGNERS, OpenedBackup, Trust, open_backup
from virtbackup.engine.stores.local import LocalFiles

PLUGIN = Path(__file__).with_name("nbdkit_plugin.py")


@dataclass(frozen=True)
class ServedDisk:
    target: str
    format: str
    server: NbdkitServer
    references: ImageReferences  # host files a qcow2 disk's header names


@contextmanager
def serving_backup(
    backup: Path,
    sockets: Path,
    identity: Path | None = None,
    trust: Trust = NO_SIGNERS,
    targets: Sequence[str] = (),
    single: bool = False,
) -> Iterator[list[ServedDisk]]:
    """Serve the disks `targets` (all when empty) of the backup directory `backup`, one
    socket each in the private directory `sockets`, until the block ends. `single`: one
    disk is wanted; UsageError when `targets` leaves a choice."""
    opened = open_backup(LocalFiles(backup), identity, trust)
    disks = [find_disk(opened, target) for target in targets] or list(opened.manifest.disks)
    if single and len(disks) != 1:
        names = ", ".join(disk.target for disk in disks)
        raise UsageError(f"backup {backup} has the disks {names}", "choose one with --disk")
    parameters = {"backup": str(backup.resolve())}
    if identity is not None:
        parameters["identity"] = str(identity.resolve())
    if trust.allowed_signers is not None:
        parameters["allowed_signers"] = str(trust.allowed_signers.resolve())
        parameters["allow_unsigned"] = "1" if trust.allow_unsigned else "0"
    with ExitStack() as stack:
        served = []
        for disk in disks:
            references = _references(opened, disk.target, disk.format)
            socket = sockets / f"{disk.target}.sock"
            server = stack.enter_context(
                nbdkit_serving(PLUGIN, {**parameters, "disk": disk.target}, socket)
            )
            served.append(ServedDisk(disk.target, disk.format, server, references))
        yield served


def _references(opened: OpenedBackup, target: str, fmt: str) -> ImageReferences:
    """Checks the disk can be read at random; for a qcow2 disk, what its header names."""
    with disk_reader(opened, target) as reader:
        if fmt != "qcow2":
            return ImageReferences()
        head = bytearray(min(HEAD_BYTES, reader.size))
        reader.read_into(memoryview(head), 0)
        return qcow2_references(bytes(head))


def serve_until_stopped(
    backup: Path,
    socket: Path,
    identity: Path | None,
    trust: Trust,
    target: str | None,
    on_ready: Callable[[ServedDisk, str], None],
) -> None:
    """Serve one disk of the backup at `socket` until a signal ends the run (Interrupted)
    or nbdkit stops on its own (NbdkitError); `on_ready` gets the disk and its URI once
    clients can connect. The socket is gone when this returns or raises."""
    check_socket_path(socket)
    with (
        socket_dir(socket.parent) as private,
        serving_backup(backup, private, identity, trust, [target] if target else (), True) as (
            served,
        ),
    ):
        publish_socket(served.server, socket)
        try:
            on_ready(served, f"nbd+unix:///?socket={socket}")
            code = served.server.process.wait()
            raise NbdkitError(f"nbdkit stopped serving (exit status {code})")
        finally:
            socket.unlink(missing_ok=True)


def check_socket_path(path: Path) -> None:
    """UsageError unless `path` is free and its directory exists."""
    if os.path.lexists(path):
        raise UsageError(f"{path} exists", "give a socket path that does not exist yet")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent} is not a directory", "create it first")


def publish_socket(served: NbdkitServer, path: Path) -> None:
    """Give the served socket the name `path` too (it stays root's: 0600)."""
    check_socket_path(path)
    os.chmod(served.socket, 0o600)
    try:
        os.link(served.socket, path)  # unlike rename, never replaces what appeared meanwhile
    except FileExistsError:
        raise UsageError(f"{path} exists", "give a socket path that does not exist yet") from None
    except OSError as err:
        raise UsageError(f"cannot create {path}: {err.strerror}") from None
