"""Open a libvirt connection, or say in one line why it cannot be opened.

libvirt's default error handler prints every error to stderr besides raising it; a
silent handler is registered so that the user reads only our one line.
"""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from virtbackup.adapters.bindings import import_libvirt
from virtbackup.core.errors import UsageError

log = logging.getLogger(__name__)

URI_EXAMPLES = "e.g. qemu:///system or qemu+ssh://HOST/system"


class ConnectFailed(UsageError):
    """The libvirt daemon cannot be reached, the URI is wrong, or access is denied."""


def _silence(_ctx: object, _err: object) -> None:
    return None


def libvirt_module() -> Any:
    """The libvirt bindings, with libvirt's own printing to stderr turned off."""
    libvirt = import_libvirt()
    libvirt.registerErrorHandler(_silence, None)
    return libvirt


@contextmanager
def connect(uri: str, *, readonly: bool = False) -> Iterator[Any]:
    """A virConnect to `uri`, closed on exit; ConnectFailed (exit 2) when it cannot open."""
    libvirt = libvirt_module()
    if not uri.strip():
        raise ConnectFailed("empty connection URI", URI_EXAMPLES)
    opener = libvirt.openReadOnly if readonly else libvirt.open
    try:
        conn = opener(uri)
    except libvirt.libvirtError as err:
        raise connect_error(libvirt, uri, err) from None
    log.debug("connected to %s%s", conn.getURI(), " (read-only)" if readonly else "")
    try:
        yield conn
    finally:
        try:
            conn.close()
        except libvirt.libvirtError as err:  # the daemon went away: nothing left to close
            log.debug("closing %s: %s", uri, err)


def is_remote(uri: str) -> bool:
    """Whether the URI reaches another host: its image paths are not ours to open."""
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    return bool(parts.hostname) or transport in ("ssh", "libssh", "libssh2", "tcp", "tls")


def connect_error(libvirt: Any, uri: str, err: Any) -> ConnectFailed:
    """Turn a failed virConnectOpen into one line that says what to do."""
    code = err.get_error_code()
    message = (err.get_error_message() or str(err)).strip()
    lowered = message.lower()
    head = f"cannot connect to {uri}: {message}"
    if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_ARG) or (
        "uri" in lowered and code == libvirt.VIR_ERR_INTERNAL_ERROR
    ):
        return ConnectFailed(head, f"check --connect ({URI_EXAMPLES})")
    denied_codes = (
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_ERR_AUTH_CANCELLED,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
        libvirt.VIR_ERR_OPERATION_DENIED,
        libvirt.VIR_ERR_ACCESS_DENIED,
    )
    denied_words = ("permission denied", "polkit", "authentication", "system bus")
    if code in denied_codes or any(word in lowered for word in denied_words):
        if os.geteuid() == 0:
            return ConnectFailed(head, "access denied: check libvirtd's access control")
        return ConnectFailed(head, "access denied: run virtbackup as root or in the libvirt group")
    if is_remote(uri):
        return ConnectFailed(head, "check that the host is reachable and runs libvirtd")
    return ConnectFailed(head, "is libvirtd running? start it (libvirtd -d, or systemctl)")
