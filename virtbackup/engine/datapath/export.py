"""Export any backup as a self-contained single-stream backup: DIR/<domain>/<stamp>/ with
manifest.json, domain.xml and one stream file per disk in today's stream format
(core/streamformat.py), which `restore` reads and `lz4 -d` decodes.

A disk in the repository needs no recompression: a chunk is exactly the frame a stream
holds for that range (core/repository_format.py), so its stored frames are copied in
index order and the stream's index is built from the chunk names (a chunk's name is the
sha256 of its data, the frame digest of the stream format). A stream disk is copied as
it is (decrypted when the backup is encrypted). An encrypted backup's chunks are
decrypted and decoded once more to learn the sha256 their keyed names hide, so its
export, like that of an encrypted stream backup, is a cleartext stream backup whose
whole-disk digest is the stream format's (the source records one folded from the keyed
names). Each written stream is then verified
like any backup before the export is committed: an export that exists is whole and
sound. It is written through the destination's partial directory, so an interrupted
export leaves no complete-looking backup.
"""

import hashlib
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from virtbackup.core.backup_errors import CorruptBackup, DestinationFull, write_error
from virtbackup.core.backup_names import stream_file_name
from virtbackup.core.manifest import LAYOUT_STREAM, DiskRecord, Manifest, build_manifest
from virtbackup.core.progress import ProgressSink
from virtbackup.core.streamformat import STREAM_FORMAT_VERSION
from virtbackup.core.xml_secrets import SecretsError, without_secrets
from virtbackup.engine.datapath.frames import EncodedChunk, FrameError
from virtbackup.engine.datapath.repository_reader import repository_disk
from virtbackup.engine.datapath.stream_reader import check_index_matches, read_index, verify_stream
from virtbackup.engine.datapath.stream_writer import StreamFile
from virtbackup.engine.stores.backup_access import NO_SIGNERS, OpenedBackup, Trust, open_backup
from virtbackup.engine.stores.local import LocalPartial, LocalStore
from virtbackup.engine.stores.store import DOMAIN_XML, MANIFEST, BackupFiles, stamp_time

_COPY_BLOCK = 1 << 20
_DIR_MODE = 0o700


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the exported backup
    manifest: Manifest


def export_backup(
    files: BackupFiles,
    stamp: str,
    to_dir: Path,
    progress: ProgressSink,
    identity: Path | None = None,
    trust: Trust = NO_SIGNERS,
    workers: int = 0,
) -> ExportResult:
    """Write the backup `stamp` (its `files`) as DIR/<domain>/<stamp>/ in the stream
    layout. CorruptBackup when the backup is damaged (nothing is left in DIR then)."""
    opened = open_backup(files, identity, trust)
    source = opened.manifest
    xml, xml_sha256 = _cleartext_xml(opened)
    to_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    store = LocalStore(to_dir)
    try:
        with store.begin(source.domain_name, stamp_time(stamp), stamp) as partial:
            disks = tuple(
                _export_disk(opened, disk, partial, progress, workers) for disk in source.disks
            )
            manifest = replace(source, disks=disks, domain_xml_sha256=xml_sha256)
            partial.write_text(DOMAIN_XML, xml)
            partial.write_text(MANIFEST, build_manifest(manifest))
            path = partial.commit()
    except DestinationFull:  # said of DIR, which is no backup destination (--dest)
        raise DestinationFull(
            f"no space left in {to_dir} for the export of {files.label}",
            "free space there or export --to another directory",
        ) from None
    return ExportResult(path, manifest)


def _cleartext_xml(opened: OpenedBackup) -> tuple[str, str]:
    """The domain XML an unencrypted copy may hold (an encrypted backup keeps secrets
    that an export must not write in the clear), and its sha256."""
    try:
        xml, _removed = without_secrets(opened.domain_xml())
    except SecretsError as err:
        raise CorruptBackup(f"{opened.files.label}/{DOMAIN_XML} cannot be read: {err}") from None
    return xml, hashlib.sha256(xml.encode()).hexdigest()


def _export_disk(
    opened: OpenedBackup,
    disk: DiskRecord,
    partial: LocalPartial,
    progress: ProgressSink,
    workers: int,
) -> DiskRecord:
    name = stream_file_name(disk.target, disk.format)
    with partial.create(name) as out:
        if disk.in_repository:
            _copy_chunks(opened, disk, out, progress)
        else:
            _copy_stream(opened, disk, out, partial.path / name)
    index = read_index(partial.path / name, disk.target)
    if disk.in_repository and opened.encrypted:  # its names were checked as it was copied
        disk = replace(disk, digest=index.header.whole_digest.hex())
    check_index_matches(index, disk)
    if verify_stream(index, disk.target, progress, workers) != disk.digest:
        raise CorruptBackup(f"{disk.target}: the data of {opened.files.label} is not its digest")
    return replace(
        disk,
        file=name,
        stored_size=partial.size_of(name),
        stream_format_version=STREAM_FORMAT_VERSION,
        layout=LAYOUT_STREAM,
        index_sha256=None,
    )


def _copy_chunks(
    opened: OpenedBackup, disk: DiskRecord, out: IO[bytes], progress: ProgressSink
) -> None:
    """The disk's chunks, their stored frames verbatim, as one stream file."""
    checked = repository_disk(opened, disk)
    zero_frames: dict[int, tuple[bytes, bytes]] = {}  # length -> frame, digest: read once
    progress.on_start(disk.byte_size, f"{disk.target} (copy)")
    try:
        with (
            StreamFile(out, disk.chunk_size) as stream,
            checked.frames.reading(checked.index.entries),
        ):
            for entry in checked.index.entries:
                try:
                    if entry.is_zero and entry.data_length in zero_frames:
                        frame, digest = zero_frames[entry.data_length]
                    else:
                        frame = checked.frames.stored_frame(entry)
                        digest = checked.frames.frame_digest(entry, frame)
                except FrameError as err:
                    raise CorruptBackup(
                        f"{disk.target}: {checked.frames.where(entry)} {err}"
                    ) from None
                if entry.is_zero:
                    zero_frames[entry.data_length] = frame, digest
                encoded = EncodedChunk((frame,), len(frame), digest, entry.is_zero)
                stream.add(entry.data_offset, entry.data_length, encoded)
                progress.on_advance(entry.data_length)
            stream.data_size = disk.byte_size
            stream.finish()
    finally:
        progress.on_done()


def _copy_stream(opened: OpenedBackup, disk: DiskRecord, out: IO[bytes], path: Path) -> None:
    """The disk's stream file as it is (decrypted when the backup is encrypted)."""
    with opened.disk_stream(disk) as stream:
        try:
            shutil.copyfileobj(stream, out, _COPY_BLOCK)
        except OSError as err:
            raise write_error(err, path) from None
