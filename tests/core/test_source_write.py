"""Which disks restore --to-source writes into their source, by what name, and which
sources it refuses."""

import dataclasses

import pytest
from manifest_samples import DISK

from virtbackup.core.source_write import SourceRefused, SourceTarget, source_target


def domain(disk_xml: str) -> str:
    return f"<domain><name>d</name><devices>{disk_xml}</devices></domain>"


NBD_UNIX = """<disk type='network' device='disk'><driver name='qemu' type='raw'/>
  <source protocol='nbd' name='exp'><host transport='unix' socket='/run/n.sock'/></source>
  <target dev='vda' bus='virtio'/></disk>"""


def test_a_file_disk_is_restored_as_a_file_only() -> None:
    xml = domain("<disk type='file'><source file='/i/a.qcow2'/><target dev='vda'/></disk>")
    assert source_target(xml, DISK) is None


def test_a_block_disk_is_written_into_its_device() -> None:
    xml = domain("<disk type='block'><source dev='/dev/loop7'/><target dev='vda'/></disk>")
    disk = dataclasses.replace(DISK, source="/dev/loop7", format="raw")
    assert source_target(xml, disk) == SourceTarget(
        "vda", "/dev/loop7", "/dev/loop7", "raw", DISK.virtual_size, "/dev/loop7"
    )


@pytest.mark.parametrize(
    ("source_xml", "name"),
    [
        (
            "<source protocol='nbd' name='exp'><host transport='unix' socket='/run/n.sock'/>",
            "nbd+unix:///exp?socket=/run/n.sock",
        ),
        ("<source protocol='nbd'><host name='10.0.0.5'/>", "nbd://10.0.0.5:10809/"),
        (
            "<source protocol='iscsi' name='iqn.2026-01.x:t/1'><host name='h' port='3261'/>",
            "iscsi://h:3261/iqn.2026-01.x:t/1",
        ),
        ("<source protocol='iscsi' name='iqn.x:t/2'><host name='h'/>", "iscsi://h:3260/iqn.x:t/2"),
    ],
)
def test_network_sources_are_named_as_qemu_opens_them(source_xml: str, name: str) -> None:
    xml = domain(f"<disk type='network'>{source_xml}</source><target dev='vda'/></disk>")
    found = source_target(xml, DISK)
    assert found is not None and found.qemu_name == name and found.device is None


@pytest.mark.parametrize(
    ("disk_xml", "message"),
    [
        (
            "<disk type='network'><source protocol='rbd' name='pool/img'><host name='m'/>"
            "</source><target dev='vda'/></disk>",
            "does not write rbd sources",
        ),
        (
            "<disk type='network'><auth username='u'><secret type='iscsi'/></auth>"
            "<source protocol='iscsi' name='iqn.x:t/1'><host name='h'/></source>"
            "<target dev='vda'/></disk>",
            "needs credentials",
        ),
        (
            "<disk type='network'><source protocol='iscsi' name='iqn.x:t/1'><host name='h'/>"
            "<auth username='u'><secret type='iscsi'/></auth></source><target dev='vda'/></disk>",
            "needs credentials",
        ),
        (NBD_UNIX.replace("dev='vda'", "dev='vdb'"), "vda is not in the backup's domain XML"),
    ],
)
def test_sources_that_cannot_be_written_are_refused(disk_xml: str, message: str) -> None:
    with pytest.raises(SourceRefused, match=message):
        source_target(domain(disk_xml), DISK)
