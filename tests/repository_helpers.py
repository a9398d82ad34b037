"""Repository backups made in a test: real chunk files, real indexes, real manifests,
written through ChunkStore and the LocalStore partial/commit, following the writer's side
of the gc protocol (register first, touch or write every chunk, commit, deregister).

Chunks here are 64 KiB (the repository's chunk size is part of its description), so a
disk of a few hundred KiB has several chunks and tests stay fast.
"""

import hashlib
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from virtbackup.core.manifest import LAYOUT_REPOSITORY, DiskRecord, Manifest, build_manifest
from virtbackup.core.repository_format import (
    GC_HIDDEN_PREFIX,
    REPOSITORY_DIR,
    RepositoryConfig,
    chunk_lengths,
    chunk_name,
    index_file_name,
    index_line,
)
from virtbackup.core.streamformat import ChunkedDigest, chunked_digest_name
from virtbackup.engine.datapath.frames import decode_chunk, encode_frame
from virtbackup.engine.stores.chunk_store import ChunkStore, Writer
from virtbackup.engine.stores.local import LocalStore

CHUNK = 64 << 10
BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)


def chunk_data(seed: int, length: int = CHUNK) -> bytes:
    """`length` bytes that differ for every seed."""
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest()
    return (block * (length // len(block) + 1))[:length]


def names_of(image: bytes) -> list[str]:
    """The chunk names of `image` on the test grid, in order."""
    return [
        chunk_name(hashlib.sha256(image[offset : offset + length]).digest())
        for offset, length in chunk_lengths(len(image), CHUNK)
    ]


def make_repository(dest: Path) -> ChunkStore:
    store = ChunkStore(dest)
    store.create(RepositoryConfig(chunk_size=CHUNK))
    return store


def store_chunks(store: ChunkStore, image: bytes) -> list[str]:
    """Touch, or write when missing, every chunk of `image`: what a registered writer
    does before its commit. The names in order."""
    names = []
    for offset, length in chunk_lengths(len(image), CHUNK):
        data = image[offset : offset + length]
        name = chunk_name(hashlib.sha256(data).digest())
        if not store.touch(name):
            frame, _ = encode_frame(memoryview(data))
            store.add(name, frame)
        names.append(name)
    return names


def write_backup(
    dest: Path, domain: str, images: dict[str, bytes], number: int = 0, writer: Writer | None = None
) -> Path:
    """A complete repository backup of `domain` with one raw disk per target of
    `images`, stamped `number` minutes after BASE_TIME; registered as a writer of its
    own unless `writer` is given. Its directory."""
    store = make_repository(dest)
    if writer is None:
        with store.writer() as own:
            return write_backup(dest, domain, images, number, own)
    started = BASE_TIME + timedelta(minutes=number)
    with LocalStore(dest).begin(domain, started) as partial:
        disks = []
        for target, image in images.items():
            names = store_chunks(store, image)
            store_chunks(store, image)  # the final check before commit
            index = b"".join(index_line(name) for name in names)
            file = index_file_name(target, "raw")
            partial.write_bytes(file, index)
            whole = ChunkedDigest()
            whole.add_all(bytes.fromhex(name) for name in names)
            disks.append(
                DiskRecord(
                    target=target,
                    source=f"/images/{domain}-{target}.raw",
                    format="raw",
                    virtual_size=len(image),
                    byte_size=len(image),
                    stored_size=len(index),
                    file=file,
                    stream_format_version=1,
                    chunk_size=CHUNK,
                    digest_algorithm=chunked_digest_name(CHUNK),
                    digest=whole.hexdigest(),
                    layout=LAYOUT_REPOSITORY,
                    index_sha256=hashlib.sha256(index).hexdigest(),
                )
            )
        manifest = Manifest(
            tool_version="0.1.0",
            domain_name=domain,
            domain_uuid="6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11",
            started=started,
            finished=started + timedelta(seconds=5),
            method="offline",
            disks=tuple(disks),
        )
        partial.write_text("manifest.json", build_manifest(manifest))
        partial.write_text("domain.xml", f"<domain><name>{domain}</name></domain>\n")
        return Path(partial.commit())


def age_chunks(store: ChunkStore, seconds: float = 3600.0) -> None:
    """Set every chunk's mtime `seconds` into the past: unused for that long."""
    for name, status in list(store.names()):
        old = status.st_mtime - seconds
        os.utime(store.path(name), (old, old))


def stored(dest: Path) -> set[str]:
    """The names of the chunks in DEST's repository."""
    return {name for name, _ in ChunkStore(dest).names()}


def hidden(dest: Path) -> list[Path]:
    """Chunks garbage collection renamed out of sight and has not decided on yet."""
    return list(ChunkStore(dest).chunks.glob(f"*/{GC_HIDDEN_PREFIX}*"))


def wait_for(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def chunk_holding(dest: Path, wanted: Callable[[bytes], bool]) -> Path:
    """The first chunk file of DEST's (plain) repository whose data `wanted` accepts."""
    for chunk in sorted((dest / REPOSITORY_DIR).rglob("*")):
        if chunk.is_file() and len(chunk.name) == 64:
            data = decode_chunk(chunk.read_bytes(), 64 * 1024 * 1024)
            if wanted(data):
                return chunk
    raise AssertionError(f"no chunk in {dest} holds the data wanted")
