"""How a network disk's recorded source is recognised, and what restore says about it."""

import pytest

from virtbackup.core.network_source import is_network_source, put_back_hint


@pytest.mark.parametrize(
    ("source", "network"),
    [
        ("nbd://unix:/run/nbd.sock", True),
        ("iscsi://10.0.0.2:3260/iqn.2026-01.x:lun/1", True),
        ("rbd://mon1:6789/pool/image", True),
        ("https://images.example/disk.raw", True),
        ("/var/lib/libvirt/images/a.qcow2", False),
        ("/srv/odd/nbd://name", False),
        ("/dev/loop3", False),
        ("ftpx://h/x", False),
    ],
)
def test_network_sources_are_recognised(source: str, network: bool) -> None:
    assert is_network_source(source) is network


def test_the_hint_names_the_file_and_the_command() -> None:
    hint = put_back_hint("vdb", "nbd://unix:/s", "/r/vdb.raw", "raw")
    assert hint.startswith("vdb was the network disk nbd://unix:/s: restored to /r/vdb.raw only")
    assert "qemu-img convert -n -f raw -O raw /r/vdb.raw VOLUME" in hint
