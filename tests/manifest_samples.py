"""A well-formed manifest of one qcow2 disk, the starting point of the parser tests."""

from datetime import UTC, datetime

from virtbackup.core.manifest import DiskRecord, Manifest

DISK = DiskRecord(
    target="vda",
    source="/var/lib/libvirt/images/web1.qcow2",
    format="qcow2",
    virtual_size=20 << 30,
    byte_size=3 << 30,
    stored_size=1 << 30,
    file="vda.qcow2.lz4",
    stream_format_version=1,
    chunk_size=4 << 20,
    digest_algorithm="sha256-4MiB-chunks",
    digest="ab" * 32,
)
MANIFEST = Manifest(
    tool_version="0.1.0",
    domain_name="web1",
    domain_uuid="6f1c2c64-2a53-4d3c-9a0e-7d0a4f1e2b11",
    started=datetime(2025, 1, 25, 18, 30, tzinfo=UTC),
    finished=datetime(2025, 1, 25, 18, 31, 12, tzinfo=UTC),
    method="offline",
    disks=(DISK,),
)
