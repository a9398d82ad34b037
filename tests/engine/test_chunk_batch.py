"""New chunks made durable in batches (engine/stores/chunk_batch.py): a chunk gets its
name only after its batch was synced, the last batch at `finish`; what is not named yet
goes with `discard` or a failure."""

import errno
import hashlib
import os
from pathlib import Path

import pytest

from virtbackup.core.backup_errors import StoreError
from virtbackup.core.repository_format import RepositoryConfig
from virtbackup.engine.datapath.frames import decode_chunk, encode_frame
from virtbackup.engine.stores import chunk_batch
from virtbackup.engine.stores.chunk_batch import ChunkBatch
from virtbackup.engine.stores.chunk_store import ChunkStore

CHUNK = 4096


def _chunks(count: int) -> list[tuple[str, bytes]]:
    found = []
    for _number in range(count):
        data = os.urandom(CHUNK)
        found.append((hashlib.sha256(data).hexdigest(), data))
    return found


def _add(batch: ChunkBatch, name: str, data: bytes) -> int:
    parts, _size = encode_frame(memoryview(data))
    return batch.add(name, parts)


def _named(store: ChunkStore) -> set[str]:
    return {name for name, _status in store.names()}


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    chunks = ChunkStore(tmp_path / "dest")
    (tmp_path / "dest").mkdir()
    chunks.create(RepositoryConfig(chunk_size=CHUNK))
    return chunks


def test_chunks_are_named_once_their_batch_is_durable(store: ChunkStore) -> None:
    chunks = _chunks(7)
    batch = ChunkBatch(store, max_files=3, max_age=3600)
    for name, data in chunks[:2]:
        assert _add(batch, name, data) > 0
    assert _named(store) == set() and len(list(store.temporary_files())) == 2
    _add(batch, *chunks[2])  # the third fills the batch: synced, then named
    assert _named(store) == {name for name, _ in chunks[:3]} and batch.syncs == 1
    for name, data in chunks[3:]:
        _add(batch, name, data)
    batch.finish()  # the rest named, and the names synced
    assert _named(store) == {name for name, _ in chunks}
    assert list(store.temporary_files()) == []
    assert batch.syncs == 4  # a full batch of 3, then the last one and its names
    for name, data in chunks:
        assert decode_chunk(store.read(name, 2 * CHUNK), CHUNK) == data
    batch.finish()  # nothing new: no sync
    assert batch.syncs == 4


def test_a_slow_backup_names_its_chunks_as_it_goes(store: ChunkStore) -> None:
    now = [0.0]
    batch = ChunkBatch(store, max_age=1.0, clock=lambda: now[0])
    first, second = _chunks(2)
    _add(batch, *first)
    now[0] = 1.5  # the first waited long enough
    _add(batch, *second)
    assert _named(store) == {first[0], second[0]}


def test_discard_removes_what_is_not_named(store: ChunkStore) -> None:
    batch = ChunkBatch(store, max_files=2, max_age=3600)
    chunks = _chunks(3)
    for name, data in chunks:
        _add(batch, name, data)
    batch.discard()
    assert _named(store) == {name for name, _ in chunks[:2]}
    assert list(store.temporary_files()) == []


def test_a_failed_sync_names_nothing_and_leaves_nothing(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(path: Path) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(chunk_batch, "sync_filesystem", failing)  # an I/O error, injected
    batch = ChunkBatch(store, max_files=2, max_age=3600)
    first, second = _chunks(2)
    _add(batch, *first)
    with pytest.raises(StoreError, match="Input/output error"):
        _add(batch, *second)
    assert _named(store) == set() and list(store.temporary_files()) == []


def test_a_failed_rename_leaves_no_temporary_file(store: ChunkStore) -> None:
    batch = ChunkBatch(store, max_files=3, max_age=3600)
    chunks = _chunks(3)
    store.chunk_dir(chunks[1][0])
    store.path(chunks[1][0]).mkdir()  # a directory under the second one's name
    _add(batch, *chunks[0])
    _add(batch, *chunks[1])
    with pytest.raises(StoreError):
        _add(batch, *chunks[2])
    assert _named(store) == {chunks[0][0]}
    assert list(store.temporary_files()) == []
