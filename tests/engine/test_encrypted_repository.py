"""Encrypted repository backups below the CLI: real files and real age keys, the
repository secret's failure paths and what gc does with an encrypted backup's index."""

import hashlib
import os
from pathlib import Path

import pytest
from age_helpers import KeyPair, make_key_pair
from backup_helpers import MiB, cmp_files, disk_of

from virtbackup.adapters import age
from virtbackup.core.backup_errors import CorruptBackup, StoreError
from virtbackup.core.errors import UsageError
from virtbackup.core.manifest import LAYOUT_REPOSITORY
from virtbackup.core.progress import NullProgress
from virtbackup.core.repository_format import (
    ChunkNames,
    RepositoryConfig,
    RepositoryFormatError,
    build_config,
    chunk_key,
    parse_config,
    secret_file,
)
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
from virtbackup.engine.datapath.disk_backup import back_up_disks
from virtbackup.engine.datapath.restore import restore_backup
from virtbackup.engine.stores.chunk_store import ChunkStore
from virtbackup.engine.stores.gc import GcSettings, ReferencesUnreadable, collect_garbage
from virtbackup.engine.stores.local import LocalStore
from virtbackup.engine.stores.repository_secret import HOST_SECRETS_DIR

CHUNK = 1 * MiB


def _image(path: Path) -> Path:
    """4 MiB: random data, a hole, random data again."""
    path.write_bytes(os.urandom(CHUNK) + bytes(2 * CHUNK) + os.urandom(CHUNK))
    return path


def _backup(dest: Path, image: Path, keys: KeyPair, state_dir: Path) -> Path:
    dest.mkdir(exist_ok=True)
    result = back_up_disks(
        LocalStore(dest),
        "web1",
        "6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11",
        "<domain><name>web1</name></domain>",
        "offline",
        [disk_of(image)],
        NullProgress(),
        WriterOptions(chunk_size=CHUNK),
        encrypt_to=age.read_recipients(keys.recipients),
        layout=LAYOUT_REPOSITORY,
        state_dir=state_dir,
    )
    return Path(result.path)


def test_names_are_keyed_per_secret_and_recipients() -> None:
    digest = hashlib.sha256(b"data").digest()
    one, two = chunk_key(b"1" * 32, "a"), chunk_key(b"1" * 32, "b")
    assert ChunkNames(one).of_digest(digest) != ChunkNames(two).of_digest(digest)
    assert ChunkNames(one).of_digest(digest) != ChunkNames().of_digest(digest) == digest.hex()
    assert ChunkNames(one).zero(CHUNK) == ChunkNames(one).of_data(bytes(CHUNK))
    assert ChunkNames(one).zero(CHUNK) != ChunkNames().zero(CHUNK)


def test_description_versions_and_hostile_ones() -> None:
    plain = RepositoryConfig(chunk_size=CHUNK)
    sealed = RepositoryConfig(chunk_size=CHUNK, secret_id="ab" * 32)
    assert '"version": 1' in build_config(plain) and '"version": 2' in build_config(sealed)
    assert parse_config(build_config(plain)) == plain
    assert parse_config(build_config(sealed)) == sealed
    text = build_config(sealed)
    for hostile in (
        text.replace('"hmac-sha256"', '"md5"'),
        text.replace("ab" * 32, "../../etc/passwd"),
        text.replace('"version": 2', '"version": 3'),
        build_config(plain).replace('"version": 1', '"version": 2'),  # no sealed section
    ):
        with pytest.raises(RepositoryFormatError):
            parse_config(hostile)


def test_restore_needs_the_secret_of_the_repository(tmp_path: Path) -> None:
    keys = make_key_pair(tmp_path / "keys")
    image = _image(tmp_path / "disk.raw")
    backup = _backup(tmp_path / "dest", image, keys, tmp_path / "state")
    restore_backup(backup, tmp_path / "out", NullProgress(), identity=keys.identity)
    assert cmp_files(tmp_path / "out" / "vda.raw", image)
    assert os.stat(tmp_path / "out" / "vda.raw").st_blocks * 512 <= 2 * CHUNK + 64 * 1024

    # another secret in its place (encrypted to the right key): refused, nothing guessed
    store = ChunkStore(tmp_path / "dest", sealed=True)
    fingerprints = age.read_recipients(keys.recipients).fingerprints()
    path = store.root / secret_file(fingerprints)
    path.write_bytes(age.encrypt_bytes(keys.recipients, os.urandom(32)))
    with pytest.raises(CorruptBackup, match="is not the secret of its repository"):
        restore_backup(backup, tmp_path / "again", NullProgress(), identity=keys.identity)
    path.unlink()
    with pytest.raises(CorruptBackup, match="cannot be read"):
        restore_backup(backup, tmp_path / "again", NullProgress(), identity=keys.identity)


def test_host_copy_missing_or_damaged_stops_the_backup(tmp_path: Path) -> None:
    keys = make_key_pair(tmp_path / "keys")
    image = _image(tmp_path / "disk.raw")
    dest = tmp_path / "dest"
    _backup(dest, image, keys, tmp_path / "state")
    with pytest.raises(UsageError, match="secret this host does not hold") as missing:
        _backup(dest, image, keys, tmp_path / "other-host")
    assert "age -d -i IDENTITY" in (missing.value.hint or "")
    (copy,) = (tmp_path / "state" / HOST_SECRETS_DIR).iterdir()
    copy.write_bytes(os.urandom(32))
    with pytest.raises(StoreError, match="is not the secret of"):
        _backup(dest, image, keys, tmp_path / "state")
    assert len(list(dest.glob("web1/2*"))) == 1  # nothing more committed


def test_gc_stops_on_a_damaged_encrypted_index_before_removing_anything(
    tmp_path: Path,
) -> None:
    keys = make_key_pair(tmp_path / "keys")
    dest = tmp_path / "dest"
    backup = _backup(dest, _image(tmp_path / "disk.raw"), keys, tmp_path / "state")
    sealed = ChunkStore(dest, sealed=True)
    stored = sorted(name for name, _ in sealed.names())
    assert len(stored) == 3  # two data chunks and the zero chunk
    index = backup / "vda.raw.idx"
    index.write_bytes(index.read_bytes()[:-1])
    with pytest.raises(ReferencesUnreadable, match="gc stopped before removing anything"):
        collect_garbage(dest, GcSettings(grace=0, settle=0))
    index.write_bytes(index.read_bytes()[:-67] + b"../../../../etc/passwd" + b"x" * 45 + b"\n")
    with pytest.raises(ReferencesUnreadable):
        collect_garbage(dest, GcSettings(grace=0, settle=0))
    assert sorted(name for name, _ in sealed.names()) == stored
