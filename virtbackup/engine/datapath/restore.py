"""Restore the disks of a backup as sparse, byte-identical files, and optionally define a
new domain on them."""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from virtbackup.adapters.hypervisor.connection import connect
from virtbackup.core import backup_names
from virtbackup.core.backup_errors import (
    CorruptBackup,
    DestinationFull,
    RestoreTargetExists,
    StoreError,
    write_error,
)
from virtbackup.core.errors import UsageError
from virtbackup.core.manifest import DiskRecord, Manifest
from virtbackup.core.progress import ProgressSink
from virtbackup.core.qcow2_refs import HEAD_BYTES, ImageReferences, qcow2_references
from virtbackup.core.restore_xml import (
    NewDomainXml,
    RestoredDisk,
    RestoreXmlError,
    check_domain_name,
    domain_xml_for_restore,
)
from virtbackup.core.signature import SignatureCheck, SignatureState
from virtbackup.core.source_write import SourceTarget
from virtbackup.engine.datapath.repository_reader import RepositoryDisk, repository_disk
from virtbackup.engine.datapath.source_restore import checked_sources, write_sources
from virtbackup.engine.datapath.stream_reader import (
    StreamIndex,
    check_index_matches,
    read_index,
    restore_frames,
    restore_stream,
)
from virtbackup.engine.datapath.stream_sequential import restore_sequential
from virtbackup.engine.stores.backup_access import NO_SIGNERS, OpenedBackup, Trust, open_backup
from virtbackup.engine.stores.local import LocalFiles
from virtbackup.engine.stores.store import BackupFiles

log = logging.getLogger(__name__)

# Directories restore creates (--to and any missing parent) get exactly this mode,
# whatever the umask: qemu runs as another user (libvirt-qemu) and must pass through
# them to reach the images, but need not list them. Existing directories are left as
# they are. Images are 0600 root: libvirt's dynamic ownership hands an image to qemu's
# user when a domain starts on it, and nobody else may read a guest's disk.
RESTORE_DIR_MODE = 0o711
RESTORE_FILE_MODE = 0o600


@dataclass(frozen=True)
class RestoredImage:
    target: str
    path: Path
    format: str


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    images: tuple[RestoredImage, ...]
    domain_uuid: str | None  # of the domain defined with --define
    signature: SignatureCheck = SignatureCheck(SignatureState.UNSIGNED)
    dropped: tuple[str, ...] = ()  # host resources left out of that domain
    written: tuple[SourceTarget, ...] = ()  # sources written back (to_source)


def restored_file_name(disk: DiskRecord) -> str:
    return backup_names.restored_file_name(disk.target, disk.format)


def restore_backup(
    backup: Path | BackupFiles,
    to_dir: Path,
    progress: ProgressSink,
    force: bool = False,
    define_as: str | None = None,
    uri: str = "qemu:///system",
    workers: int = 0,
    identity: Path | None = None,
    trust: Trust = NO_SIGNERS,
    keep_host_devices: bool = False,
    to_source: bool = False,
) -> RestoreResult:
    """Check everything that can be checked first, then write each disk to a hidden
    file in `to_dir` and rename it into place only when complete. A backup on a remote
    or encrypted (with `identity`) is read front to back; its frames are checked against
    its index before the file is renamed. A bad signature (or a missing one where `trust`
    expects it) stops it before anything is written. The domain defined with `define_as`
    gets the restored disks and no host resources unless `keep_host_devices`
    (core/guest_only.py). With `to_source`, each network and block disk is then also
    written into its own source, every source checked before anything is written
    (engine/datapath/source_restore.py)."""
    if define_as is not None:
        check_domain_name(define_as)
    files = LocalFiles(backup) if isinstance(backup, Path) else backup
    opened = open_backup(files, identity, trust)
    manifest = opened.manifest
    indexes = [(disk, random_access_index(opened, disk)) for disk in manifest.disks]
    to_dir = to_dir.absolute()
    targets = [to_dir / _plain_child(restored_file_name(disk)) for disk in manifest.disks]
    restored = list(zip(manifest.disks, targets, strict=True))
    existing = [str(path) for path in targets if os.path.lexists(path)]
    if existing and not force:
        raise RestoreTargetExists(
            f"{', '.join(existing)} already exist(s)", "add --force to overwrite"
        )
    domain_xml = None
    if define_as is not None:
        domain_xml = opened.domain_xml()
        blank = {disk.target: RestoredDisk(str(path), disk.format) for disk, path in restored}
        _new_domain(opened, domain_xml, define_as, blank, keep_host_devices)  # fails early
        ensure_name_free(uri, define_as)
    sources = checked_sources(manifest, opened.domain_xml(), uri) if to_source else []
    _make_dir(to_dir)
    images = []
    dir_fd = _open_dir(to_dir)
    try:
        for (disk, index), path in zip(indexes, targets, strict=True):
            log.info("restoring %s to %s", disk.target, path)
            _restore_one(opened, index, disk, _Output(dir_fd, path), progress, workers)
            images.append(RestoredImage(disk.target, path, disk.format))
    finally:
        os.close(dir_fd)
    write_sources(sources, {image.target: image.path for image in images}, uri)
    written = tuple(sources)
    if define_as is None or domain_xml is None:
        return RestoreResult(manifest, tuple(images), None, opened.signature, written=written)
    # Only now are the images' own headers known, and the host files they name.
    final = {
        disk.target: RestoredDisk(str(path), disk.format, _image_references(path, disk.format))
        for disk, path in restored
    }
    new = _new_domain(opened, domain_xml, define_as, final, keep_host_devices)
    with connect(uri) as hypervisor:
        uuid = hypervisor.define(new.xml)
    return RestoreResult(manifest, tuple(images), uuid, opened.signature, new.dropped, written)


def ensure_name_free(uri: str, name: str) -> None:
    """UsageError if a domain called `name` exists; checked before restoring anything."""
    with connect(uri) as hypervisor:
        if hypervisor.exists(name):
            raise UsageError(
                f"a domain named {name} already exists", "choose another --define NAME"
            )


def _new_domain(
    opened: OpenedBackup,
    domain_xml: str,
    name: str,
    disks: dict[str, RestoredDisk],
    keep_host_devices: bool,
) -> NewDomainXml:
    try:
        return domain_xml_for_restore(domain_xml, name, disks, keep_host_devices)
    except RestoreXmlError as err:
        raise CorruptBackup(f"domain.xml of {opened.files.label} cannot be used: {err}") from None


def _image_references(path: Path, fmt: str) -> ImageReferences:
    """The backing and data files a restored qcow2 image names in its header."""
    if fmt != "qcow2":
        return ImageReferences()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            head = os.pread(fd, HEAD_BYTES, 0)
        finally:
            os.close(fd)
    except OSError as err:
        raise _target_error(err, path) from None
    return qcow2_references(head)


def random_access_index(
    opened: OpenedBackup, disk: DiskRecord
) -> StreamIndex | RepositoryDisk | None:
    """The checked index of a stream that can be read at random, else None; for a disk
    in the repository, its checked index of chunks."""
    path = opened.random_access(disk)
    if disk.in_repository:
        return repository_disk(opened, disk)
    if path is None:
        return None
    stored_size = opened.files.size(disk.file)
    if stored_size is not None and stored_size != disk.stored_size:
        raise CorruptBackup(
            f"{disk.target}: {disk.file} has {stored_size} bytes, the manifest says "
            f"{disk.stored_size} (truncated or appended to)"
        )
    index = read_index(path, disk.target)
    check_index_matches(index, disk)
    return index


def _plain_child(name: str) -> str:
    """`name` if it names a file directly inside --to (the manifest parser allows no
    other; checked again where the path is built)."""
    if not backup_names.is_plain_name(name) or name in (".", ".."):
        raise CorruptBackup(f"the backup names the file {name!r}, which is not a plain name")
    return name


@dataclass(frozen=True)
class _Output:
    """An image in --to, reached only through the directory's descriptor: a symbolic
    link planted in --to is never followed, the file is created, never opened."""

    dir_fd: int
    path: Path  # for messages and the result

    @property
    def temporary(self) -> str:
        return f".{self.path.name}.restoring"

    def create_temporary(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(self.temporary, flags, RESTORE_FILE_MODE, dir_fd=self.dir_fd)

    def remove_temporary(self) -> None:
        try:
            os.unlink(self.temporary, dir_fd=self.dir_fd)  # removes a link, never its target
        except FileNotFoundError:
            pass

    def commit(self) -> None:
        os.rename(self.temporary, self.path.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)


def _restore_one(
    opened: OpenedBackup,
    index: StreamIndex | RepositoryDisk | None,
    disk: DiskRecord,
    output: _Output,
    progress: ProgressSink,
    workers: int,
) -> None:
    path = output.path
    try:
        output.remove_temporary()  # left by an interrupted restore
        fd = output.create_temporary()
        try:
            if isinstance(index, RepositoryDisk):
                with index.frames.reading(index.index.entries):
                    digest = restore_frames(
                        index.index, index.frames, fd, disk.target, progress, workers
                    )
            elif index is not None:
                digest = restore_stream(index, fd, disk.target, progress, workers)
            else:
                with opened.disk_stream(disk) as stream:
                    digest = restore_sequential(stream, disk, fd, disk.target, progress, workers)
        finally:
            os.close(fd)
        if digest != disk.digest:  # every frame matched its entry; the entries must too
            raise CorruptBackup(
                f"{disk.target}: the restored data's {disk.digest_algorithm} is {digest}, "
                f"the manifest records {disk.digest}"
            )
        output.commit()
    except OSError as err:
        output.remove_temporary()
        raise _target_error(err, path) from None
    except BaseException:
        output.remove_temporary()
        raise


def _make_dir(to_dir: Path) -> None:
    """Create --to and its missing parents with RESTORE_DIR_MODE (see there)."""
    missing = []
    at = to_dir
    while not os.path.lexists(at) and at != at.parent:
        missing.append(at)
        at = at.parent
    try:
        for directory in reversed(missing):
            try:
                os.mkdir(directory, RESTORE_DIR_MODE)
            except FileExistsError:
                continue  # made meanwhile by someone else: theirs, left as it is
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, RESTORE_DIR_MODE)  # the umask took bits off
            finally:
                os.close(fd)
    except OSError as err:
        raise _target_error(err, to_dir) from None
    if not to_dir.is_dir():
        raise StoreError(f"restore destination {to_dir} is not a directory")
    if not os.access(to_dir, os.W_OK | os.X_OK) or os.statvfs(to_dir).f_flag & os.ST_RDONLY:
        raise StoreError(f"restore destination {to_dir} is not writable")


def _open_dir(to_dir: Path) -> int:
    try:
        return os.open(to_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise _target_error(err, to_dir) from None


def _target_error(err: OSError, path: Path) -> StoreError:
    full = DestinationFull(
        f"no space left while restoring {path}", "free space or use another --to"
    )
    return write_error(err, path, full)
