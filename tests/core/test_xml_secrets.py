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
