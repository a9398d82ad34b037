"""Repository backups for tests, built from the format's parts: real chunk frames
(frames.encode_frame) stored through ChunkStore, real index files and manifests,
committed through LocalStore's partial directory. A test fixture, not a writer: it
reads the whole image, holds nothing back for memory and knows no garbage collection."""

import hashlib
import os
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from backup_helpers import DOMAIN_XML, MiB

from virtbackup.core.manifest import LAYOUT_REPOSITORY, DiskRecord, Manifest, build_manifest
from virtbackup.core.repository_format import (
    RepositoryConfig,
    chunk_lengths,
    chunk_name,
    index_file_name,
    index_line,
)
from virtbackup.core.streamformat import (
    STREAM_FORMAT_VERSION,
    ChunkedDigest,
    chunked_digest_name,
)
from virtbackup.engine.datapath.frames import encode_frame, zero_chunk
from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.store import DOMAIN_XML as DOMAIN_XML_FILE
from virtbackup.engine.stores.store import MANIFEST

CHUNK_SIZE = 1 * MiB  # small images, several chunks each
UUID = "6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11"


@dataclass(frozen=True)
class RepositoryBackup:
    path: Path
    domain: str
    stamp: str
    manifest: Manifest
    chunks: dict[str, list[str]]  # target -> chunk names in index order

    @property
    def label(self) -> str:
        return f"{self.domain}/{self.stamp}"


def write_repository_backup(
    dest: Path,
    images: dict[str, Path],
    now: datetime,
    domain: str = "web1",
    chunk_size: int = CHUNK_SIZE,
) -> RepositoryBackup:
    """A repository backup of the raw `images` (target -> image) of `domain` at `now`."""
    dest.mkdir(exist_ok=True)
    chunk_store = ChunkStore(dest)
    chunk_store.create(RepositoryConfig(chunk_size=chunk_size))
    xml = DOMAIN_XML.replace("<name>web1</name>", f"<name>{domain}</name>")
    with LocalStore(dest).begin(domain, now) as partial:
        records = []
        chunks = {}
        for target, image in images.items():
            record, names, index = _store_disk(chunk_store, target, image, chunk_size)
            partial.write_bytes(record.file, index)
            records.append(record)
            chunks[target] = names
        manifest = Manifest(
            tool_version="0.1.0",
            domain_name=domain,
            domain_uuid=UUID,
            started=now,
            finished=now,
            method="offline",
            disks=tuple(records),
            domain_xml_sha256=hashlib.sha256(xml.encode()).hexdigest(),
        )
        partial.write_text(DOMAIN_XML_FILE, xml)
        partial.write_text(MANIFEST, build_manifest(manifest))
        path = partial.commit()
    return RepositoryBackup(path, domain, path.name, manifest, chunks)


def _store_disk(
    chunk_store: ChunkStore, target: str, image: Path, chunk_size: int
) -> tuple[DiskRecord, list[str], bytes]:
    data = image.read_bytes()
    whole = ChunkedDigest()
    names = []
    added = 0
    for offset, length in chunk_lengths(len(data), chunk_size):
        piece = memoryview(data)[offset : offset + length]
        digest = hashlib.sha256(piece).digest()
        name = chunk_name(digest)
        if not chunk_store.touch(name):
            parts = zero_chunk(length).parts if piece == bytes(length) else encode_frame(piece)[0]
            added += chunk_store.add(name, parts)
        whole.add(digest)
        names.append(name)
    index = b"".join(index_line(name) for name in names)
    record = DiskRecord(
        target=target,
        source=str(image),
        format="raw",
        virtual_size=len(data),
        byte_size=len(data),
        stored_size=added + len(index),
        file=index_file_name(target, "raw"),
        stream_format_version=STREAM_FORMAT_VERSION,
        chunk_size=chunk_size,
        digest_algorithm=chunked_digest_name(chunk_size),
        digest=whole.hexdigest(),
        layout=LAYOUT_REPOSITORY,
        index_sha256=hashlib.sha256(index).hexdigest(),
    )
    return record, names, index


def random_image(path: Path, size: int, seed: int, zero_chunks: tuple[int, ...] = ()) -> Path:
    """A raw image of random (incompressible) chunks, with all-zero chunks at the given
    chunk numbers, written sparse there."""
    rng = random.Random(seed)
    with open(path, "wb") as out:
        out.truncate(size)
        for number, (offset, length) in enumerate(chunk_lengths(size, CHUNK_SIZE)):
            if number not in zero_chunks:
                out.seek(offset)
                out.write(rng.randbytes(length))
    return path


def changed_image(source: Path, path: Path, chunk: int, seed: int) -> Path:
    """A copy of `source` whose chunk number `chunk` holds other random data."""
    data = bytearray(source.read_bytes())
    start = chunk * CHUNK_SIZE
    end = min(start + CHUNK_SIZE, len(data))
    data[start:end] = random.Random(seed).randbytes(end - start)
    path.write_bytes(data)
    return path


def stored_bytes(dest: Path, names: set[str]) -> int:
    chunk_store = ChunkStore(dest)
    return sum(os.stat(chunk_store.path(name)).st_size for name in names)
