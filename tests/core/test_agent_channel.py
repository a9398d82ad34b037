"""What a domain XML says about the guest agent channel."""

import pytest

from virtbackup.core.agent_channel import agent_connected, has_agent_channel
from virtbackup.core.diskxml import DiskXmlError


def domain(devices: str) -> str:
    return f"<domain type='qemu'><name>d</name><devices>{devices}</devices></domain>"


def test_agent_channel() -> None:
    channel = """<channel type='unix'><source mode='bind'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/></channel>"""
    assert has_agent_channel(domain(channel))
    assert not has_agent_channel(
        domain("<channel type='pty'><target type='virtio' name='x'/></channel>")
    )


def test_agent_connected_needs_the_connected_state() -> None:
    channel = """<channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/></channel>"""
    assert agent_connected(domain(channel))
    assert not agent_connected(domain(channel.replace("'connected'", "'disconnected'")))
    assert not agent_connected("<domain><devices/></domain>")


def test_broken_xml_is_one_clear_error() -> None:
    with pytest.raises(DiskXmlError, match="cannot parse the domain XML"):
        agent_connected("<domain><devices>")
