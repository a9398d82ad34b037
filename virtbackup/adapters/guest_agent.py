"""The guest agent through libvirt's own APIs: is it answering, and fstrim.

libvirt sends `guest-sync` with a 5 s timeout before every agent command, so a dead or
hung agent fails fast instead of blocking the run. The public APIs are used on purpose
instead of the raw `qemuAgentCommand`, which marks the domain as tainted
("custom-ga-command") in its log.
"""

import logging
from typing import Any

from virtbackup.adapters.libvirt_conn import libvirt_module
from virtbackup.core.errors import VirtbackupError

log = logging.getLogger(__name__)


class AgentError(VirtbackupError):
    """The guest agent refused or failed a command."""


def _message(err: Any) -> str:
    text = err.get_error_message() if hasattr(err, "get_error_message") else None
    return str(text or err).strip()


def silent_reason(dom: Any) -> str | None:
    """None when the agent answers (guest-get-time), else why it does not.

    An agent that answers with an error (the command disabled in its configuration)
    still answers: only "not responding" and "not connected" count as silent.
    """
    libvirt = libvirt_module()
    try:
        dom.getTime(0)
    except libvirt.libvirtError as err:
        silent = (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_ERR_OPERATION_INVALID)
        if err.get_error_code() in silent:
            return _message(err)
        log.debug("%s: agent answered get-time with an error: %s", dom.name(), _message(err))
    return None


def fstrim(dom: Any) -> None:
    """Trim every mounted filesystem of the guest (libvirt's FSTrim, guest-fstrim).

    Returns when the guest's FITRIM calls are done, which includes qemu passing the
    discards down to the image. Takes as long as the guest needs (large filesystems:
    minutes), but a silent agent fails within libvirt's sync timeout.
    """
    libvirt = libvirt_module()
    try:
        dom.fSTrim(None, 0, 0)
    except libvirt.libvirtError as err:
        raise AgentError(f"the guest agent of {dom.name()} cannot trim: {_message(err)}") from None
