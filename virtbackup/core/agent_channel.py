"""What a libvirt domain XML says about the qemu guest agent: whether the domain has its
channel (configured), and in the live XML whether an agent is connected to it. Pure,
tested without libvirt.
"""

from virtbackup.core.diskxml import parse_domain_xml

AGENT_CHANNEL = "org.qemu.guest_agent.0"


def has_agent_channel(xml: str) -> bool:
    """Whether the domain has a qemu guest agent channel (freeze/thaw, fstrim)."""
    return any(
        target.get("name") == AGENT_CHANNEL
        for target in parse_domain_xml(xml).iterfind("./devices/channel/target")
    )


def agent_connected(live_xml: str) -> bool:
    """Whether a guest agent is connected to its channel (qemu-ga runs in the guest)."""
    return any(
        target.get("name") == AGENT_CHANNEL and target.get("state") == "connected"
        for target in parse_domain_xml(live_xml).iterfind("./devices/channel/target")
    )
