"""Incremental reads of a shut-off domain (the offline method, in the repository): its
qcow2 images keep their checkpoints' bitmaps, so only what changed since the newest
backup is read.

    window = offline_changes(session, dom, facts, disks, change_base)
    if window is not None:          # else: read the images directly, in full
        with window as images: ...

qemu keeps a checkpoint's dirty bitmap in the qcow2 image when it stops, and every
program that opens the image through qemu's block layer (qemu, qemu-io, qemu-img)
records its writes there. So after a backup of the running domain, a shutdown and
writes made offline, the bitmap `virtbackup-<run>` still covers every change since that
backup. One qemu-nbd per disk serves the guest's view of the image read-only with
`base:allocation` and `qemu:dirty-bitmap:<checkpoint>`, read as the backup job's export
is read (datapath/nbd_source): what is stored is the same raw view, so the next backup,
running or not, reuses this one's index.

The bitmap is trusted only as the backup API's is (stores/change_base.changes_since:
the newest verified backup's checkpoint, known to libvirt, the same image, the same
size) and only when the image holds it, enabled and saved cleanly (`in-use`: qemu was
killed, the bitmap is inconsistent). When no disk can be read incrementally the images
are read directly as before, and the summary says why.

libvirt 9 makes no checkpoint of an inactive domain ("cannot create checkpoint for
inactive domain"), so this backup's checkpoint is made by hand: a bitmap of that name
added to each image (`qemu-img bitmap --add`, enabled) and libvirt's metadata for it
redefined. A running domain's next backup then asks libvirt for the changes since it
like for any other (checked: libvirt serves the bitmap of a redefined checkpoint).
libvirt cannot delete an inactive domain's checkpoint either: ours beyond the newest
four lose their metadata (metadata only) and their bitmaps (`qemu-img bitmap --remove`).
Each qemu-nbd is journalled (core/undo.NbdServerRecord): `clean` ends a server a killed
run left behind and removes its socket.
"""

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from virtbackup.adapters import qemu_nbd
from virtbackup.adapters.hypervisor.domain import Domain
from virtbackup.core.backup_job import (
    KEEP_CHECKPOINTS,
    checkpoint_name,
    checkpoints_to_delete,
    offline_socket_path,
    redefined_checkpoint_xml,
)
from virtbackup.core.errors import VirtbackupError
from virtbackup.core.model import DiskFacts, DomainFacts, Method
from virtbackup.core.undo import NbdServerRecord
from virtbackup.engine.datapath.disk_backup import DiskSource, EarlierDisk
from virtbackup.engine.methods.image_source import Consistency, StableImages, served_over_nbd
from virtbackup.engine.runs.session import Session
from virtbackup.engine.stores.change_base import ChangeBase, changes_since

ChangeWindow = AbstractContextManager[StableImages]


def offline_changes(
    session: Session,
    dom: Domain,
    facts: DomainFacts,
    disks: Sequence[DiskFacts],
    definition: str,
    base: ChangeBase | str | None,
) -> tuple[ChangeWindow | None, list[str]]:
    """The window serving the disks with their changes since the base, or None (read
    the images directly) and why any disk is read in full."""
    if not isinstance(base, ChangeBase):
        return None, []  # no backup with a checkpoint before: nothing to say
    others = [d.target for d in disks if d.source_type != "file" or d.format != "qcow2"]
    if others:
        return None, [f"read in full: {', '.join(others)} not a qcow2 file"]
    # the checkpoint is written into every image: never into one other domains may use
    shared = [d.target for d in disks if d.readonly or d.shareable]
    if shared:
        return None, [f"read in full: {', '.join(shared)} read-only or shareable"]
    since, earlier, notes = changes_since(base, disks, dom.backups.checkpoint_times())
    for target in list(earlier):
        disk = next(d for d in disks if d.target == target)
        problem = _bitmap_problem(disk.path or "", base.checkpoint)
        if problem:
            notes.append(f"{target}: read in full: {problem}")
            del earlier[target]
    if since is None or not earlier:
        return None, notes
    served = _Served(session, dom, facts, disks, definition, since, earlier, notes)
    return served.window(), notes


def _bitmap_problem(image: str, name: str) -> str | None:
    """Why the image's bitmap `name` cannot tell the changes (None: it can)."""
    try:
        found = next((b for b in qemu_nbd.bitmaps(image) if b.name == name), None)
    except VirtbackupError as err:
        return f"the bitmaps of {image} cannot be read ({err})"
    if found is None:
        return (
            f"{image} has no bitmap {name} (the image was replaced since, or qemu "
            "stopped without saving it)"
        )
    if "in-use" in found.flags:
        return f"bitmap {name} in {image} is inconsistent (qemu stopped without saving it)"
    if "auto" not in found.flags:
        return f"bitmap {name} in {image} is disabled: it does not record writes"
    return None


class _Served:
    """The disks served by qemu-nbd, with this backup's checkpoint made first."""

    def __init__(
        self,
        session: Session,
        dom: Domain,
        facts: DomainFacts,
        disks: Sequence[DiskFacts],
        definition: str,
        since: str,
        earlier: dict[str, EarlierDisk],
        notes: list[str],
    ) -> None:
        self.session = session
        self.dom = dom
        self.facts = facts
        self.disks = disks
        self.definition = definition
        self.since = since
        self.earlier = earlier
        self.notes = notes

    @contextmanager
    def window(self) -> Iterator[StableImages]:
        session, facts = self.session, self.facts
        checkpoint = checkpoint_name(session.run_id)
        self._make_checkpoint(checkpoint)
        images = []
        with session.scope():
            for disk in self.disks:
                socket = str(offline_socket_path(facts.uuid, disk.target, session.run_id))
                served = disk.target in self.earlier
                session.register(NbdServerRecord(socket))
                qemu_nbd.serve(disk.path or "", socket, disk.target, self.since if served else None)
                images.append(self._source(disk, Path(socket)))
            session.steps.step(
                facts.name,
                f"offline, served by qemu-nbd, checkpoint {checkpoint}: "
                + ", ".join(
                    f"{d.target} changes since {self.since}"
                    if d.target in self.earlier
                    else f"{d.target} in full"
                    for d in self.disks
                ),
            )
            yield StableImages(
                facts.name,
                facts.uuid,
                Method.OFFLINE,
                Consistency.OFFLINE,
                self.definition,
                tuple(images),
                checkpoint=checkpoint,
                notes=tuple(self.notes),
            )
        self._prune()

    def _make_checkpoint(self, name: str) -> None:
        """This instant's checkpoint: a bitmap in every image, then libvirt's metadata."""
        added = []
        try:
            for disk in self.disks:
                qemu_nbd.add_bitmap(disk.path or "", name)
                added.append(disk.path or "")
            all_targets = [d.target for d in self.facts.disks if d.target != "?"]
            targets = [d.target for d in self.disks]
            xml = redefined_checkpoint_xml(name, targets, all_targets, int(time.time()))
            self.dom.backups.redefine_checkpoint(xml)
        except VirtbackupError:
            for image in added:  # a bitmap libvirt does not know would never be pruned
                qemu_nbd.remove_bitmap(image, name)
            raise

    def _source(self, disk: DiskFacts, socket: Path) -> DiskSource:
        earlier = self.earlier.get(disk.target)
        changes = None if earlier is None else f"qemu:dirty-bitmap:{self.since}"
        return served_over_nbd(disk, socket, changes, earlier)

    def _prune(self) -> None:
        """Our checkpoints beyond the newest few: libvirt forgets them, the images lose
        their bitmaps; one that cannot go now is tried again after the next backup."""
        try:
            for old in checkpoints_to_delete(self.dom.backups.checkpoints(), KEEP_CHECKPOINTS):
                self.dom.backups.delete_checkpoint(old, metadata_only=True)
                for disk in self.disks:
                    image = disk.path or ""
                    if any(b.name == old for b in qemu_nbd.bitmaps(image)):
                        qemu_nbd.remove_bitmap(image, old)
        except VirtbackupError as err:
            self.session.steps.warning(self.facts.name, f"old checkpoints are kept for now: {err}")
