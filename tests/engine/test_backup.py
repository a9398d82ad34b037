"""back_up_disks: complete backups or none, earlier backups untouched, stale partials removed."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from backup_helpers import MiB, digest_by_coreutils, disk_of, make_backup, small_filesystem
from harness.images import build_fs_image

from virtbackup.core.backup_errors import DiskBackupFailed, StoreError
from virtbackup.core.errors import ExitCode
from virtbackup.core.progress import NullProgress
from virtbackup.engine.datapath.disk_backup import DiskSource
from virtbackup.engine.datapath.verify import verify_backup
from virtbackup.engine.stores.local import LocalStore


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fs_image(tmp_path_factory.mktemp("img") / "web1.raw", size=48 * MiB).path


def test_backup_layout_and_permissions(tmp_path: Path, image: Path) -> None:
    second = tmp_path / "data.raw"
    second.write_bytes(os.urandom(MiB))
    result = make_backup(tmp_path, [disk_of(image), disk_of(second, "vdb")])
    assert result.path.parent == tmp_path / "web1"
    assert sorted(p.name for p in result.path.iterdir()) == [
        "domain.xml",
        "manifest.json",
        "vda.raw.lz4",
        "vdb.raw.lz4",
    ]
    for path in [tmp_path / "web1", result.path]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for path in result.path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    vda = result.manifest.disks[0]
    assert (vda.byte_size, vda.virtual_size) == (48 * MiB, 48 * MiB)
    assert vda.stored_size == (result.path / "vda.raw.lz4").stat().st_size
    assert not [p for p in (tmp_path / "web1").iterdir() if p.name.startswith(".")]


def test_manifest_digest_is_checked_with_standard_tools(tmp_path: Path, image: Path) -> None:
    """The README's check command against manifest.json, on the default 4 MiB grid: an
    ext4 image (holes and data) and a file whose last chunk is short."""
    odd = tmp_path / "odd.raw"
    with open(odd, "wb") as f:
        f.truncate(2 * 4 * MiB + 4097)
        f.seek(4 * MiB - 3)
        f.write(os.urandom(10))  # data across a chunk boundary
        f.seek(2 * 4 * MiB + 1)
        f.write(b"last")
    result = make_backup(tmp_path, [disk_of(image), disk_of(odd, "vdb")], chunk_size=4 * MiB)
    document = json.loads((result.path / "manifest.json").read_text())
    for disk in document["disks"]:
        assert disk["digest_algorithm"] == "sha256-4MiB-chunks"
        assert disk["chunk_size"] == 4 * MiB
        assert disk["digest"] == digest_by_coreutils(result.path / disk["file"])


def test_failed_disk_leaves_nothing_and_names_the_disk(tmp_path: Path, image: Path) -> None:
    earlier = make_backup(tmp_path, [disk_of(image)])
    missing = DiskSource("vdb", tmp_path / "gone.raw", "raw", MiB)
    with pytest.raises(DiskBackupFailed, match="failed at disk vdb: cannot open") as caught:
        make_backup(tmp_path, [disk_of(image), missing])
    assert caught.value.exit_code == ExitCode.FAILED
    assert [p.name for p in (tmp_path / "web1").iterdir()] == [earlier.path.name]
    assert verify_backup(earlier.path, NullProgress()).ok


def test_full_destination(image: Path, tmp_path: Path) -> None:
    noise = tmp_path / "noise.raw"
    noise.write_bytes(os.urandom(16 * MiB))  # does not compress: cannot fit in 8 MiB
    with small_filesystem(8 * MiB) as dest:
        # the file by its path (it is written through a descriptor, whose number is no name)
        full = r"no space left on the backup destination while writing /\S+/vd[ab]\.raw\.lz4:"
        with pytest.raises(DiskBackupFailed, match=full):
            make_backup(dest, [disk_of(image), disk_of(noise, "vdb")])
        assert [p.name for p in (dest / "web1").iterdir()] == []


def test_missing_and_read_only_destination(tmp_path: Path, image: Path) -> None:
    with pytest.raises(StoreError, match="does not exist: create it or choose another --dest"):
        LocalStore(tmp_path / "nowhere").begin("web1", datetime.now(UTC))
    with small_filesystem(4 * MiB) as dest:
        subprocess.run(["mount", "-o", "remount,ro", str(dest)], check=True)
        with pytest.raises(StoreError, match="read-only filesystem") as caught:
            make_backup(dest, [disk_of(image)])
        assert caught.value.exit_code == ExitCode.FAILED


_SLOW_BACKUP = """
import sys
from pathlib import Path
from virtbackup.engine.stores.local import LocalStore
from virtbackup.core.progress import NullProgress
from virtbackup.engine.datapath.disk_backup import DiskSource, back_up_disks
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
dest, image = Path(sys.argv[1]), Path(sys.argv[2])
disk = DiskSource("vda", image, "raw", image.stat().st_size)
back_up_disks(LocalStore(dest), "web1", "u", "<domain/>", "offline", [disk], NullProgress(),
              WriterOptions(chunk_size=1 << 20, bwlimit=1 << 20))
"""


def test_sigkill_mid_stream_keeps_earlier_backup(tmp_path: Path, image: Path) -> None:
    earlier = make_backup(tmp_path, [disk_of(image)])
    time.sleep(1.1)  # a new stamp
    child = subprocess.Popen([sys.executable, "-c", _SLOW_BACKUP, str(tmp_path), str(image)])
    try:
        partial = _wait_for_partial_stream(tmp_path / "web1", child)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert partial.exists()
    store = LocalStore(tmp_path)
    assert [b.path for b in store.list_backups("web1")] == [earlier.path]
    assert verify_backup(earlier.path, NullProgress()).ok
    # the next run (or `clean`) removes what the dead run left
    assert store.remove_partials() == [partial]
    later = make_backup(tmp_path, [disk_of(image)])
    assert [b.path for b in store.list_backups("web1")] == [later.path, earlier.path]


def test_partial_of_a_live_run_is_left_alone(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with store.begin("web1", datetime.now(UTC)) as partial:
        assert store.remove_partials() == []
        assert partial.path.exists()
    assert not partial.path.exists()  # left without commit: removed


def _wait_for_partial_stream(domain_dir: Path, child: subprocess.Popen[bytes]) -> Path:
    deadline = time.monotonic() + 120  # the child's start alone takes seconds on a loaded host
    while time.monotonic() < deadline and child.poll() is None:
        for partial in domain_dir.glob(".*.partial"):
            stream = partial / "vda.raw.lz4"
            if stream.exists() and stream.stat().st_size > 0:
                return partial
        time.sleep(0.05)
    raise AssertionError(f"the child never started writing (exit status {child.poll()})")
