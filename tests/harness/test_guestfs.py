"""The guestfs appliance runs here and sees the filesystems the image builders make."""

import hashlib
from pathlib import Path
from typing import Any

from harness.images import MiB, build_fs_image


def test_appliance_reads_a_built_qcow2_image(tmp_path: Path, guestfs_handle: Any) -> None:
    image = build_fs_image(tmp_path / "g.qcow2", fmt="qcow2", size=64 * MiB, content=2 * MiB)
    g = guestfs_handle([image.path])
    assert g.list_filesystems() == {"/dev/sda": "ext4"}
    g.mount_ro("/dev/sda", "/")
    name, digest = next(iter(image.files.items()))
    assert hashlib.sha256(g.read_file(f"/{name}")).hexdigest() == digest
    assert g.statvfs("/")["bfree"] > 0
