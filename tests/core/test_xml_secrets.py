"""Graphics passwords found in and cut out of a domain's XML, the rest left byte for byte."""

import pytest

from virtbackup.core.xml_secrets import SecretsError, secrets_in, without_secrets

XML = """<domain type='qemu'>
  <name>web1</name>
  <devices>
    <graphics type='vnc' port='-1' autoport='yes' passwd='pw>"1' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <graphics type="spice" passwd="pw2" autoport="yes"/>
    <qemu:x xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0' passwd='not-graphics'/>
  </devices>
</domain>
"""


def test_passwords_are_found_and_removed() -> None:
    assert secrets_in(XML) == ("vnc graphics password", "spice graphics password")
    stripped, removed = without_secrets(XML)
    assert removed == ("vnc graphics password", "spice graphics password")
    assert "pw>" not in stripped and "pw2" not in stripped
    assert secrets_in(stripped) == ()
    expected = XML.replace(""" passwd='pw>"1'""", "").replace(' passwd="pw2"', "")
    assert stripped == expected  # everything else is untouched, namespaces included


@pytest.mark.parametrize(
    "xml",
    [
        "<domain><devices><graphics type='vnc' port='-1'/></devices></domain>",
        "<domain/>",
    ],
)
def test_no_secret_no_change(xml: str) -> None:
    assert without_secrets(xml) == (xml, ())


def test_not_xml() -> None:
    with pytest.raises(SecretsError, match="not well-formed"):
        without_secrets("<domain>")


def test_the_usage_of_a_disk_secret_is_removed_and_its_uuid_kept() -> None:
    xml = """<domain><devices>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/>
      <auth username='u'><secret type='iscsi' usage='web-lun&gt;x'/></auth>
      <source protocol='iscsi' name='iqn.x/1'><host name='h'/></source></disk>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='pool/img'>
        <auth username='admin'><secret type="ceph" uuid="3c5b" usage="client.admin"/></auth>
      </source></disk>
    <secretish usage='not-a-secret'/>
</devices></domain>"""
    assert secrets_in(xml) == ("name (usage) of a host secret for a disk",)
    stripped, removed = without_secrets(xml)
    assert removed == secrets_in(xml)
    assert "web-lun" not in stripped and "client.admin" not in stripped
    assert "<secret type='iscsi'/>" in stripped and '<secret type="ceph" uuid="3c5b"/>' in stripped
    assert "<secretish usage='not-a-secret'/>" in stripped and secrets_in(stripped) == ()
