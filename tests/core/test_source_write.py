"""Which disks restore --to-source writes into their source, by what name, and which
sources it refuses."""

import dataclasses
import json

import pytest
from manifest_samples import DISK

from virtbackup.core.source_write import (
    SECRET_ID,
    SecretRef,
    SourceRefused,
    SourceTarget,
    source_target,
)


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
            "<disk type='network'><auth username='u'><secret type='iscsi' usage='x'/></auth>"
            "<source protocol='nbd'><host name='h'/></source><target dev='vda'/></disk>",
            "needs credentials, which restore --to-source passes to iSCSI only",
        ),
        (
            "<disk type='network'><source protocol='iscsi' name='iqn.x:t/1'><host name='h'/>"
            "<auth username='u'><secret type='iscsi'/></auth></source><target dev='vda'/></disk>",
            "the backup does not say which libvirt secret opens",
        ),
        (NBD_UNIX.replace("dev='vda'", "dev='vdb'"), "vda is not in the backup's domain XML"),
    ],
)
def test_sources_that_cannot_be_written_are_refused(disk_xml: str, message: str) -> None:
    with pytest.raises(SourceRefused, match=message):
        source_target(domain(disk_xml), DISK)


CHAP_DISK = """<disk type='network' device='disk'>{auth}
  <source protocol='iscsi' name='iqn.2026-01.x:t/2'><host name='10.0.0.9' port='3262'/></source>
  <target dev='vda' bus='virtio'/></disk>"""
ISCSI = dataclasses.replace(DISK, source="iscsi://10.0.0.9:3262/iqn.2026-01.x:t/2")


def test_an_iscsi_source_with_chap_names_its_secret_and_hides_it_from_the_name() -> None:
    auth = "<auth username='vb'><secret type='iscsi' uuid='0d6c-1'/></auth>"
    found = source_target(domain(CHAP_DISK.format(auth=auth)), ISCSI)
    assert found is not None and found.secret == SecretRef("iscsi", "0d6c-1", None)
    assert found.qemu_name.startswith("json:")
    assert json.loads(found.qemu_name.removeprefix("json:")) == {
        "file": {
            "driver": "iscsi",
            "transport": "tcp",
            "portal": "10.0.0.9:3262",
            "target": "iqn.2026-01.x:t",
            "lun": 2,
            "user": "vb",
            "password-secret": SECRET_ID,
        }
    }


def test_the_secret_comes_from_the_definition_when_the_backup_left_its_usage_out() -> None:
    stripped = domain(CHAP_DISK.format(auth="<auth username='vb'><secret type='iscsi'/></auth>"))
    usage = "<auth username='vb'><secret type='iscsi' usage='lun2'/></auth>"
    defined = domain(CHAP_DISK.format(auth=usage))
    found = source_target(stripped, ISCSI, defined)
    assert found is not None and found.secret == SecretRef("iscsi", None, "lun2")
    moved = defined.replace("10.0.0.9", "10.0.0.8")  # another source now: not its secret
    with pytest.raises(SourceRefused, match="does not say which libvirt secret"):
        source_target(stripped, ISCSI, moved)
