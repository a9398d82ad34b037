"""Whether libvirt offers the backup API, read from domain capabilities XML."""

import pytest

from virtbackup.core.domain_caps import CapsQuery, caps_query, offers_backup

DOMAIN = """<domain type='qemu'><name>vm</name>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices><emulator> /usr/bin/qemu-system-x86_64 </emulator></devices></domain>"""


def test_the_query_describes_the_domain() -> None:
    assert caps_query(DOMAIN) == CapsQuery(
        "/usr/bin/qemu-system-x86_64", "x86_64", "pc-q35-7.2", "qemu"
    )
    bare = caps_query("<domain type='kvm'><name>vm</name></domain>")
    assert bare == CapsQuery(None, None, None, "kvm")


def caps(features: str) -> str:
    return f"<domainCapabilities><features>{features}</features></domainCapabilities>"


@pytest.mark.parametrize(
    ("document", "offered"),
    [
        (caps("<backup supported='yes'/>"), True),
        (caps("<backup supported='no'/>"), False),
        (caps("<sev supported='no'/>"), False),
        ("<domainCapabilities/>", False),
        ("not xml", False),
    ],
)
def test_only_a_supported_backup_feature_offers_it(document: str, offered: bool) -> None:
    assert offers_backup(document) is offered
