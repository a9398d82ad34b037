"""Write one disk source into the deduplicating repository: chunks into the chunk store,
their names into the disk's index (see core/repository_format.py).

The source is read by the chunk pipeline (chunk_pipeline.py); each worker names its
chunk and makes sure the repository holds it:
- an all-zero chunk (read, or a hole that was not read) is the zero chunk of its
  length: its name is known, it is never compressed nor hashed;
- any other chunk is named by its sha256; a name this backup already used costs
  nothing more, else it is touched (ChunkStore.touch) and only when the repository
  lacks it compressed and added;
- a chunk the caller declares unchanged since an earlier backup (`Unchanged`) is not
  read: the earlier index names it, and it is touched; only if it is gone is its range
  read after all.
The calling thread writes the names in order to the index and folds the chunk digests
(the names themselves) into the whole-disk digest.

An encrypted backup (`sealed_to`: the recipients file) names chunks by the keyed digest
of the repository secret (core/repository_format.ChunkNames) and encrypts each new
chunk's frame with age in the worker that made it; the whole-disk digest is folded from
the names either way, so an unchanged chunk needs its earlier name only.

The garbage-collection protocol (engine/stores/chunk_store.py) asks the caller to run
this inside a registered Writer and, before commit, to touch every name once more
(RepositoryBackup.confirm_all).

Durability: a crash at any instant must leave (1) no chunk name that holds less than its
whole chunk (a later backup would reuse it unread), and (2) no committed backup whose
index names a chunk that is not durable. New chunks go through a ChunkBatch
(engine/stores/chunk_batch.py): written under temporary names, made durable together by
one syncfs, and only then renamed to their names, which gives (1); write_disk returns
only after the batch is finished (every chunk named, the names synced), and the caller
commits the backup only after write_disk returned for every disk, which gives (2). The
index itself is written while the chunks are, but only into the backup's partial
directory, which nothing reads until the commit. One fsync per chunk file would give
the same at one journal commit per file: ~2 ms each here, ~60 s of a first backup of a
2 GiB image in 64 KiB chunks.
"""

import hashlib
import threading
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO

from virtbackup.adapters import age
from virtbackup.adapters.file_label import file_label
from virtbackup.core.backup_errors import CorruptBackup, write_error
from virtbackup.core.progress import ProgressSink
from virtbackup.core.repository_format import PLAIN_NAMES, ChunkNames, chunk_name, index_line
from virtbackup.core.streamformat import FRAME_DIGEST, ChunkedDigest, chunked_digest_name
from virtbackup.engine.datapath.chunk_pipeline import (
    Chunk,
    ReadableSource,
    SourceChunks,
    WriterOptions,
)
from virtbackup.engine.datapath.frames import Buffer, encode_frame, zero_chunk
from virtbackup.engine.datapath.io_control import write_all
from virtbackup.engine.datapath.stream_writer import is_zero_chunk
from virtbackup.engine.stores.chunk_batch import ChunkBatch
from virtbackup.engine.stores.chunk_store import SETTLE_SECONDS, ChunkStore


@dataclass(frozen=True)
class Unchanged:
    """What an earlier backup of the same disk says: its index (the chunk names in
    order) and the numbers of the chunks that have not changed since."""

    names: Sequence[str]
    chunks: Container[int]


@dataclass(frozen=True)
class ChunkResult:
    data_size: int  # the source's size
    digest_name: str
    digest: str  # hex of the chunked whole-disk digest (core/streamformat.py)
    index_size: int  # bytes of the index
    index_sha256: str
    bytes_read: int  # from the source (holes and unchanged chunks are not read)
    chunks_new: int  # chunks this disk added to the repository
    chunks_reused: int  # chunks it found there (or added earlier in this backup)
    bytes_added: int  # bytes of the chunks it added


@dataclass(frozen=True)
class _Stored:
    name: str
    added: int  # bytes written to the repository; 0: it was there


_INDEX_BLOCK = 64 << 10
_GONE = _Stored("", -1)  # an unchanged chunk that the repository no longer holds


class RepositoryBackup:
    """The chunks one backup uses, over all its disks.

    `used` holds the digest (32 bytes) of every chunk this backup has named, so that a
    chunk is touched once per backup and so that confirm_all can touch them all again
    before commit. It is the only thing that grows with the disks: 262144 chunks for a
    1 TiB disk of 4 MiB chunks, about 100 bytes each in a set (the bytes object and its
    slot), 26 MiB at most, and far less in practice (holes share one zero chunk)."""

    def __init__(
        self,
        store: ChunkStore,
        options: WriterOptions,
        names: ChunkNames = PLAIN_NAMES,
        sealed_to: Path | None = None,
    ) -> None:
        self.store = store
        self.options = options
        self.names = names
        self.sealed_to = sealed_to
        self.used: set[bytes] = set()
        self.sleep: Callable[[float], None] = time.sleep  # tests wait for nothing
        self.batch = ChunkBatch(store)
        self._lock = threading.Lock()

    def write_disk(
        self,
        source: Path | ReadableSource,
        index: IO[bytes],
        progress: ProgressSink,
        label: str,
        unchanged: Unchanged | None = None,
    ) -> ChunkResult:
        """Back up `source` into the repository, its index into the file `index`."""
        work = partial(_store_read_chunk, self)
        known = None if unchanged is None else partial(_known_job, self, unchanged)
        try:
            with SourceChunks(source, self.options, work, known) as chunks:
                progress.on_start(chunks.size, label)
                try:
                    result = _DiskWriter(self, chunks, index, progress).run()
                finally:
                    progress.on_done()
            self.batch.finish()  # every chunk the index names durable (module docstring)
        except BaseException:
            self.batch.discard()  # the workers are done: nothing is added any more
            raise
        return result

    def confirm_all(self) -> None:
        """Touch every chunk this backup uses once more, right before commit: a chunk
        gone meanwhile (removed by a garbage collection that missed this backup's
        registration) fails the backup instead of committing a backup without it. A
        chunk that gc hid just after this backup's first touch is put back by that gc
        once it sees the touch, so a missing chunk is looked for once more after gc's
        settle time before the backup fails."""
        for digest in self.used:
            name = chunk_name(digest)
            if self.store.touch(name):
                continue
            self.sleep(2 * SETTLE_SECONDS)
            if not self.store.touch(name):
                raise CorruptBackup(
                    f"chunk {name} vanished from {self.store.chunks} during the backup; "
                    "nothing was committed"
                )

    def store_data(self, buffer: bytearray, length: int) -> _Stored:
        """Name the chunk in `buffer[:length]` and have the repository hold it."""
        if is_zero_chunk(buffer, length):
            return self.store_zero(length)
        data = memoryview(buffer)[:length]
        name = self.names.of_data(data)
        if not self._claim(bytes.fromhex(name)) or self.store.touch(name):
            return _Stored(name, 0)
        parts, _size = encode_frame(data, self.options.compression_level)
        return _Stored(name, self._add(name, parts))

    def store_zero(self, length: int) -> _Stored:
        name = self.names.zero(length)
        if not self._claim(bytes.fromhex(name)) or self.store.touch(name):
            return _Stored(name, 0)
        return _Stored(name, self._add(name, zero_chunk(length).parts))

    def _add(self, name: str, frame: tuple[Buffer, ...]) -> int:
        if self.sealed_to is None:
            return self.batch.add(name, frame)
        sealed = age.encrypt_bytes(self.sealed_to, b"".join(frame))
        return self.batch.add(name, (sealed,))

    def reuse(self, name: str) -> _Stored:
        """A chunk an earlier backup named: touched, or _GONE when it no longer exists
        (claimed only once it is known to be there, so that confirm_all never looks for
        a name the index did not get)."""
        digest = bytes.fromhex(name)
        with self._lock:
            if digest in self.used:
                return _Stored(name, 0)
        if not self.store.touch(name):
            return _GONE
        with self._lock:
            self.used.add(digest)
        return _Stored(name, 0)

    def _claim(self, digest: bytes) -> bool:
        """Whether this is the first use of the chunk in this backup."""
        with self._lock:
            if digest in self.used:
                return False
            self.used.add(digest)
            return True


def _store_read_chunk(backup: RepositoryBackup, buffer: bytearray, length: int) -> _Stored:
    return backup.store_data(buffer, length)


def _known_job(
    backup: RepositoryBackup, unchanged: Unchanged, number: int
) -> partial[_Stored] | None:
    if number not in unchanged.chunks or number >= len(unchanged.names):
        return None
    return partial(backup.reuse, unchanged.names[number])


class _DiskWriter:
    def __init__(
        self,
        backup: RepositoryBackup,
        chunks: SourceChunks[_Stored],
        index: IO[bytes],
        progress: ProgressSink,
    ) -> None:
        self.backup = backup
        self.chunks = chunks
        self.index = index
        self.progress = progress
        self.whole = ChunkedDigest(FRAME_DIGEST)
        self.index_digest = hashlib.sha256()
        self.index_size = 0
        self.pending = bytearray()  # index lines not yet written: written in blocks
        self.new = 0
        self.reused = 0
        self.added = 0

    def run(self) -> ChunkResult:
        for chunk in self.chunks.results():
            stored = self._stored(chunk)
            self.chunks.done(chunk)
            self.whole.add(bytes.fromhex(stored.name))
            self._write_line(index_line(stored.name))
            self.new += stored.added > 0
            self.reused += stored.added == 0
            self.added += stored.added
            self.progress.on_advance(chunk.length)
        self._sync()
        return ChunkResult(
            data_size=self.chunks.size,
            digest_name=chunked_digest_name(self.backup.options.chunk_size),
            digest=self.whole.hexdigest(),
            index_size=self.index_size,
            index_sha256=self.index_digest.hexdigest(),
            bytes_read=self.chunks.bytes_read,
            chunks_new=self.new,
            chunks_reused=self.reused,
            bytes_added=self.added,
        )

    def _stored(self, chunk: Chunk[_Stored]) -> _Stored:
        if chunk.result is None:  # a hole
            return self.backup.store_zero(chunk.length)
        stored = chunk.result.result()
        if stored is _GONE:  # unchanged, but no longer in the repository: read it
            return self.chunks.read_now(chunk)
        return stored

    def _write_line(self, line: bytes) -> None:
        self.pending += line
        self.index_digest.update(line)
        self.index_size += len(line)
        if len(self.pending) >= _INDEX_BLOCK:
            self._flush()

    def _sync(self) -> None:
        """Write out the rest of the index (the backup's commit syncs the file)."""
        self.index.flush()  # whatever the file object holds, then our blocks after it
        self._flush()

    def _flush(self) -> None:
        try:
            write_all(self.index.fileno(), (self.pending,))
        except OSError as err:
            raise write_error(err, file_label(self.index)) from None
        self.pending.clear()
