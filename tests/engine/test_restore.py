"""restore --define: a new libvirt domain on the restored disks, beside the original."""

import os
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from backup_helpers import MiB, disk_of, make_backup

from virtbackup.core.errors import UsageError
from virtbackup.core.progress import NullProgress
from virtbackup.engine.datapath.restore import restore_backup


@pytest.mark.libvirt
def test_define_a_copy(libvirt_conn: Any, libvirt: Any, tmp_path: Path) -> None:
    image = tmp_path / "web1.raw"
    image.write_bytes(os.urandom(MiB) + bytes(3 * MiB))
    backup = make_backup(tmp_path / "dest", [disk_of(image)]).path
    name = f"vbtest-copy-{uuid.uuid4().hex[:8]}"
    try:
        result = restore_backup(backup, tmp_path / "restored", NullProgress(), define_as=name)
        domain = libvirt_conn.lookupByName(name)
        assert domain.UUIDString() == result.domain_uuid
        assert result.domain_uuid != "6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11"
        xml = ET.fromstring(domain.XMLDesc(0))
        source = xml.find("devices/disk/source")
        assert source is not None and source.get("file") == str(tmp_path / "restored/vda.raw")
        mac = xml.find("devices/interface/mac")
        assert mac is not None and mac.get("address") != "52:54:00:12:34:56"
        with pytest.raises(UsageError, match=f"a domain named {name} already exists"):
            restore_backup(backup, tmp_path / "again", NullProgress(), define_as=name, force=True)
        assert not (tmp_path / "again").exists()  # checked before anything was written
    finally:
        try:
            libvirt_conn.lookupByName(name).undefine()
        except libvirt.libvirtError:
            pass
