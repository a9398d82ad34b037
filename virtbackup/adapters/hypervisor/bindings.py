"""The libvirt bindings, imported when first needed, and libvirt's errors made ours.

libvirt's default error handler prints every error to stderr besides raising it; a
silent handler is registered so that the user reads only our one line.
"""

from types import ModuleType
from typing import Any

from virtbackup.core.errors import VirtbackupError, missing_binding


class HypervisorError(VirtbackupError):
    """libvirt refused or failed a call."""


def _silence(_ctx: object, _err: object) -> None:
    return None


def import_libvirt() -> ModuleType:
    """The libvirt bindings (python3-libvirt)."""
    try:
        import libvirt
    except ImportError as err:
        raise missing_binding("libvirt", "python3-libvirt", err) from None
    module: ModuleType = libvirt
    return module


def libvirt_module() -> Any:
    """The libvirt bindings, with libvirt's own printing to stderr turned off."""
    libvirt = import_libvirt()
    libvirt.registerErrorHandler(_silence, None)
    return libvirt


def message(err: Any) -> str:
    """The text of a libvirtError without libvirt's prefixes."""
    text = err.get_error_message() if hasattr(err, "get_error_message") else None
    return str(text or err).strip()
