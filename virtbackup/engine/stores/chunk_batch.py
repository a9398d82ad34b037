"""New chunks of a backup, made durable many at a time (the rules they keep are in
engine/datapath/chunk_writer.py).

Each chunk is written to a temporary name in its directory and not synced on its own.
Once a batch is full (MAX_FILES files or MAX_BYTES, or its oldest file MAX_AGE seconds
old, so that names still appear steadily in a slow backup), one syncfs makes the whole
batch durable and only then are its files renamed to their chunk names; `finish` names
the rest and syncs once more, so that the last renames are durable too before the
caller writes anything that relies on them. Until it is named, a chunk is invisible to
other backups (their `touch` misses it and they write their own copy) and to gc, which
removes temporary files only once they are older than every live writer. `discard`
removes the temporary files not yet named (a failed or interrupted backup).
"""

import threading
import time
from collections.abc import Callable
from pathlib import Path

from virtbackup.core.backup_errors import write_error
from virtbackup.engine.datapath.frames import Buffer
from virtbackup.engine.datapath.io_control import sync_filesystem
from virtbackup.engine.stores.chunk_store import ChunkStore, remove_quietly, rename_into_place

MAX_FILES = 256
MAX_BYTES = 64 << 20
MAX_AGE = 1.0  # seconds

_Pending = list[tuple[Path, Path]]  # (temporary file, chunk name it gets)


class ChunkBatch:
    """Adds chunks to `store` in batches; thread-safe (the writer's workers share it)."""

    def __init__(
        self,
        store: ChunkStore,
        max_files: int = MAX_FILES,
        max_bytes: int = MAX_BYTES,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.clock = clock
        self.syncs = 0  # how many times the file system was synced (for tests)
        self._lock = threading.Lock()
        self._pending: _Pending = []
        self._bytes = 0
        self._oldest = 0.0
        self._named_unsynced = False  # renames not yet made durable

    def add(self, name: str, frame: tuple[Buffer, ...]) -> int:
        """Write the chunk `name` (its frame, in pieces); the bytes written. It has its
        name once its batch is durable, at the latest after `finish`."""
        directory = self.store.chunk_dir(name)
        temporary, written = self.store.write_temporary(directory, name, frame, sync=False)
        with self._lock:
            if not self._pending:
                self._oldest = self.clock()
            self._pending.append((temporary, directory / name))
            self._bytes += written
            full = len(self._pending) >= self.max_files or self._bytes >= self.max_bytes
            batch = self._take() if full or self.clock() - self._oldest >= self.max_age else []
        if batch:
            self._name(batch)
        return written

    def finish(self) -> None:
        """Name every chunk added and make the names durable."""
        with self._lock:
            batch = self._take()
        if batch:
            self._name(batch)
        with self._lock:
            unsynced, self._named_unsynced = self._named_unsynced, False
        if unsynced:
            self._sync()

    def discard(self) -> None:
        """Remove the chunks added but not yet named."""
        with self._lock:
            batch = self._take()
        for temporary, _final in batch:
            remove_quietly(temporary)

    def _take(self) -> _Pending:
        batch, self._pending, self._bytes = self._pending, [], 0
        return batch

    def _name(self, batch: _Pending) -> None:
        """Make the batch's files durable, then give them their names."""
        try:
            self._sync()
            for number, (temporary, final) in enumerate(batch):
                rename_into_place(temporary, final)
                batch[number] = (final, final)  # named: not to be removed below
        except BaseException:
            for temporary, final in batch:
                if temporary != final:
                    remove_quietly(temporary)
            raise
        finally:
            with self._lock:
                self._named_unsynced = True

    def _sync(self) -> None:
        try:
            sync_filesystem(self.store.chunks)
        except OSError as err:
            raise write_error(err, self.store.chunks) from None
        self.syncs += 1
