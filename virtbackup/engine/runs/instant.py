"""`restore BACKUP --instant --define NAME`: a new domain running within seconds on local
qcow2 overlays whose backing is the backup's disks served read-only over NBD, then the
data copied into the overlays while it runs (runs/instant_pull), which become its images.

Each disk is journalled (InstantPullRecord) before its server starts; the record's
"undo" finishes the copy, so a run that ends in any way (Ctrl-C included: the guest
keeps running and the copy goes on first) and `clean` after a kill -9 both leave the
domain on local images, or say in one line how to get there.
"""

import os
import uuid as uuids
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters import images
from virtbackup.adapters.hypervisor.connection import Hypervisor, connect
from virtbackup.core.backup_errors import CorruptBackup, RestoreTargetExists
from virtbackup.core.backup_names import restored_file_name
from virtbackup.core.progress import ProgressSink, StepSink
from virtbackup.core.restore_xml import (
    RestoredDisk,
    RestoreXmlError,
    check_domain_name,
    domain_xml_for_restore,
    with_nbd_backing,
)
from virtbackup.core.undo import InstantPullRecord, instant_socket_dir
from virtbackup.engine.datapath.restore import ensure_name_free
from virtbackup.engine.runs.instant_pull import (
    export_alive,
    finish_instant_pull,
    pull,
    qemu_socket_dir,
)
from virtbackup.engine.runs.session import Session
from virtbackup.engine.stores.backup_access import Trust, open_backup
from virtbackup.engine.stores.local import LocalFiles

OVERLAY_FORMAT = "qcow2"


@dataclass(frozen=True)
class InstantResult:
    domain_uuid: str
    images: tuple[tuple[str, Path], ...]  # (target, final image)


def instant_restore(
    backup: Path,
    to_dir: Path,
    name: str,
    *,
    uri: str,
    state_dir: Path,
    identity: Path | None,
    trust: Trust,
    progress: ProgressSink,
    steps: StepSink,
    on_running: Callable[[str], None],
    keep_host_devices: bool = False,
) -> InstantResult:
    """Start `name` on overlays in `to_dir` backed by the backup's disks, call
    `on_running(uuid)`, copy the data in, and return once it runs on local images."""
    check_domain_name(name)
    opened = open_backup(LocalFiles(backup), identity, trust)
    disks = opened.manifest.disks
    to_dir = to_dir.absolute()
    overlays = {
        disk.target: to_dir / restored_file_name(disk.target, OVERLAY_FORMAT) for disk in disks
    }
    existing = [str(path) for path in overlays.values() if os.path.lexists(path)]
    if existing:
        raise RestoreTargetExists(f"{', '.join(existing)} already exist(s)", "remove them first")
    blank = {target: RestoredDisk(str(path), OVERLAY_FORMAT) for target, path in overlays.items()}
    try:
        new = domain_xml_for_restore(opened.domain_xml(), name, blank, keep_host_devices)
    except RestoreXmlError as err:
        raise CorruptBackup(f"domain.xml of {opened.files.label} cannot be used: {err}") from None
    domain_uuid = str(uuids.uuid4())
    sockets = Path(instant_socket_dir(domain_uuid))
    records = [
        InstantPullRecord(
            target=disk.target,
            overlay=str(overlays[disk.target]),
            socket=str(sockets / f"{disk.target}.sock"),
            backup=str(backup.resolve()),
            identity=str(identity.resolve()) if identity else "",
        )
        for disk in disks
    ]
    backings = {disk.target: (str(sockets / f"{disk.target}.sock"), disk.format) for disk in disks}
    xml = with_nbd_backing(new.xml, domain_uuid, backings)
    ensure_name_free(uri, name)
    to_dir.mkdir(parents=True, exist_ok=True)
    with connect(uri) as hypervisor:
        # The servers outlive the session, whose unwinding may still need them.
        with (
            ExitStack() as servers,
            Session(state_dir, hypervisor, domain_uuid, name, steps=steps) as session,
        ):
            qemu_socket_dir(sockets)
            for record, disk in zip(records, disks, strict=True):
                session.register(record, _finisher(hypervisor, domain_uuid, record))
                servers.enter_context(export_alive(record, reuse=False))
                images.create_overlay(
                    Path(record.overlay), _nbd_uri(record.socket), disk.format, disk.virtual_size
                )
            hypervisor.define(xml)
            dom = hypervisor.domain(name)
            dom.start()
            on_running(domain_uuid)
            for record in records:
                pull(dom, record.target, progress)
    return InstantResult(domain_uuid, tuple((t, p) for t, p in overlays.items()))


def _finisher(
    hypervisor: Hypervisor, domain_uuid: str, record: InstantPullRecord
) -> Callable[[], None]:
    """How this run finishes a disk it serves itself, when it ends early."""
    return lambda: finish_instant_pull(hypervisor, domain_uuid, record, serving=True)


def _nbd_uri(socket: str) -> str:
    return f"nbd+unix:///?socket={socket}"
