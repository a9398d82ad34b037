"""Encrypted backups (age): nothing readable without the key, stock tools restore them,
restore and verify through the identity file, damage and wrong keys named."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from age_helpers import KeyPair, make_key_pair
from backup_helpers import (
    DOMAIN_XML,
    MiB,
    cmp_files,
    digest_by_coreutils,
    disk_of,
    small_filesystem,
)
from harness.images import build_fs_image

from virtbackup.adapters import age
from virtbackup.core.backup_errors import DiskBackupFailed
from virtbackup.core.errors import UsageError, VirtbackupError
from virtbackup.core.manifest import parse_manifest
from virtbackup.core.progress import NullProgress
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
from virtbackup.engine.datapath.disk_backup import BackupResult, DiskSource, back_up_disks
from virtbackup.engine.datapath.restore import restore_backup
from virtbackup.engine.datapath.verify import verify_backup
from virtbackup.engine.stores.local import LocalStore

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fs_image(tmp_path_factory.mktemp("img") / "web1.raw", size=40 * MiB).path


def encrypted_backup(dest: Path, disks: list[DiskSource], keys: KeyPair) -> BackupResult:
    dest.mkdir(exist_ok=True)
    return back_up_disks(
        LocalStore(dest),
        "web1",
        "6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11",
        DOMAIN_XML,
        "offline",
        disks,
        NullProgress(),
        WriterOptions(),
        encrypt_to=age.read_recipients(keys.recipients),
    )


def age_decrypt(keys: KeyPair, path: Path) -> bytes:
    return subprocess.run(
        ["age", "-d", "-i", str(keys.identity), str(path)], capture_output=True, check=True
    ).stdout


def test_layout_and_nothing_readable_without_the_key(
    tmp_path: Path, image: Path, keys: KeyPair
) -> None:
    result = encrypted_backup(tmp_path / "dest", [disk_of(image)], keys)
    assert sorted(p.name for p in result.path.iterdir()) == [
        "domain.xml.age",
        "manifest.json",
        "manifest.json.age",
        "vda.raw.lz4.age",
    ]
    for path in result.path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    public = (result.path / "manifest.json").read_text()
    document = json.loads(public)
    # which key opens it, as the README tells a user to compute it; no key itself
    by_shell = subprocess.run(
        ["sh", "-c", f"age-keygen -y {keys.identity} | tr -d '\\n' | sha256sum"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    assert document["encryption"] == {"scheme": "age", "recipients": [f"sha256:{by_shell[:16]}"]}
    assert keys.public_key not in public
    for secret in (str(image), "6f1c2c64", result.manifest.disks[0].digest, "52:54:00"):
        assert secret not in public
    sizes = {f["file"]: f["stored_size"] for f in document["files"]}
    assert sizes == {p.name: p.stat().st_size for p in result.path.iterdir() if p.suffix == ".age"}
    for path in result.path.glob("*.age"):
        assert path.read_bytes().startswith(b"age-encryption.org/v1\n")
        assert b"VBKINDEX" not in path.read_bytes()  # the index is encrypted too


def test_stock_age_and_lz4_restore_it_and_check_the_digest(
    tmp_path: Path, image: Path, keys: KeyPair
) -> None:
    """`age -d -i KEY vda.raw.lz4.age | lz4 -d | cmp`, and the manifest's digest checked
    the README's way on the decrypted stream."""
    result = encrypted_backup(tmp_path / "dest", [disk_of(image)], keys)
    manifest = parse_manifest(age_decrypt(keys, result.path / "manifest.json.age").decode())
    (disk,) = manifest.disks
    assert disk.file == "vda.raw.lz4.age"
    assert disk.stored_size == (result.path / disk.file).stat().st_size
    clear_stream = tmp_path / "vda.raw.lz4"
    clear_stream.write_bytes(age_decrypt(keys, result.path / disk.file))
    pipeline = f"age -d -i {keys.identity} {result.path / disk.file} | lz4 -dc | cmp - {image}"
    subprocess.run(["sh", "-c", pipeline], check=True)
    assert digest_by_coreutils(clear_stream) == disk.digest
    assert b"<name>web1</name>" in age_decrypt(keys, result.path / "domain.xml.age")


def test_restore_and_verify_with_the_identity(tmp_path: Path, image: Path, keys: KeyPair) -> None:
    second = tmp_path / "data.raw"
    second.write_bytes(os.urandom(3 * MiB))
    result = encrypted_backup(tmp_path / "dest", [disk_of(image), disk_of(second, "vdb")], keys)
    restored = restore_backup(
        result.path, tmp_path / "out", NullProgress(), identity=keys.identity, workers=2
    )
    assert [i.path.name for i in restored.images] == ["vda.raw", "vdb.raw"]
    assert cmp_files(image, tmp_path / "out" / "vda.raw")
    assert cmp_files(second, tmp_path / "out" / "vdb.raw")
    assert os.stat(tmp_path / "out" / "vda.raw").st_blocks <= os.stat(image).st_blocks
    outcome = verify_backup(result.path, NullProgress(), identity=keys.identity)
    assert outcome.ok and outcome.recorded


def test_without_or_with_a_wrong_identity(tmp_path: Path, image: Path, keys: KeyPair) -> None:
    result = encrypted_backup(tmp_path / "dest", [disk_of(image)], keys)
    with pytest.raises(UsageError, match="is encrypted: give --identity FILE"):
        restore_backup(result.path, tmp_path / "out", NullProgress())
    stranger = make_key_pair(tmp_path / "other")
    with pytest.raises(age.WrongIdentity, match="no key in identity file"):
        verify_backup(result.path, NullProgress(), identity=stranger.identity)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("where", ["header", "payload", "tail"])
def test_damaged_ciphertext_fails_verify_and_restore(
    tmp_path: Path, image: Path, keys: KeyPair, where: str
) -> None:
    result = encrypted_backup(tmp_path / "dest", [disk_of(image)], keys)
    stream = result.path / "vda.raw.lz4.age"
    data = bytearray(stream.read_bytes())
    at = {"header": 40, "payload": len(data) // 2, "tail": len(data) - 3}[where]
    data[at] ^= 0x01
    stream.chmod(0o600)
    stream.write_bytes(bytes(data))
    outcome = verify_backup(result.path, NullProgress(), identity=keys.identity)
    assert not outcome.ok
    assert outcome.problem is not None and "vda.raw.lz4.age" in outcome.problem
    with pytest.raises(Exception, match="vda.raw.lz4.age"):
        restore_backup(result.path, tmp_path / "out", NullProgress(), identity=keys.identity)
    assert not (tmp_path / "out" / "vda.raw").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_full_destination_leaves_no_partial(image: Path, keys: KeyPair) -> None:
    with small_filesystem(8 * MiB) as mountpoint:
        dense = mountpoint.parent / "dense.raw"
        dense.write_bytes(os.urandom(12 * MiB))
        full = r"no space left on the backup destination while writing /\S+/vda\.raw\.lz4\.age"
        with pytest.raises(DiskBackupFailed, match=full):
            encrypted_backup(mountpoint / "dest", [disk_of(dense)], keys)
        assert not list((mountpoint / "dest" / "web1").iterdir())


def test_encrypted_restore_to_a_full_filesystem_fails_and_leaves_nothing(
    tmp_path: Path, keys: KeyPair
) -> None:
    dense = tmp_path / "dense.raw"
    dense.write_bytes(os.urandom(12 * MiB))  # 3 frames; about 6 MiB fit below
    result = encrypted_backup(tmp_path / "dest", [disk_of(dense)], keys)
    with small_filesystem(8 * MiB) as mountpoint:
        out = mountpoint / "out"
        with pytest.raises(VirtbackupError, match="no space left"):
            restore_backup(result.path, out, NullProgress(), identity=keys.identity)
        assert not out.exists() or not list(out.iterdir())


def test_killed_encrypted_backup_leaves_nothing_that_looks_complete(
    tmp_path: Path, keys: KeyPair
) -> None:
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(MiB))
    dest = tmp_path / "dest"
    dest.mkdir()
    script = (
        f"import sys; sys.path[:0] = [{str(TESTS)!r}]\n"
        "from pathlib import Path\n"
        "from age_helpers import KeyPair\n"
        "from test_encrypted_backup import encrypted_backup\n"
        "from backup_helpers import disk_of\n"
        f"k = KeyPair(Path({str(keys.identity)!r}), Path({str(keys.recipients)!r}), '')\n"
        f"encrypted_backup(Path({str(dest)!r}), [disk_of(Path({str(big)!r}))], k)\n"
    )
    # Absolute: pytest may run from any folder, not only the checkout's top.
    paths = [TESTS / "engine", TESTS, TESTS.parent]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(path) for path in paths)}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((dest / "web1").glob(".*.partial/*.age")):
        assert child.poll() is None, "the backup ended before it was killed"
        time.sleep(0.02)
    os.killpg(child.pid, signal.SIGKILL)  # virtbackup and its age child, as systemd would
    child.wait()
    assert list((dest / "web1").glob(".*.partial/*.age")), "killed before it wrote a stream"
    assert not [p for p in (dest / "web1").iterdir() if not p.name.startswith(".")]
    LocalStore(dest).remove_partials()
    assert not list((dest / "web1").iterdir())
