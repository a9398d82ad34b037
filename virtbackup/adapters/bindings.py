"""Lazy imports of the distribution's libvirt and guestfs bindings.

Both are C extensions shipped by Debian (python3-libvirt, python3-guestfs) for its
/usr/bin/python3; they are imported only by the commands that need them, so that
`--help` and the pure core work without them and a missing one is one clear line.
"""

from types import ModuleType

from virtbackup.core.errors import MissingComponent

_VENV_HINT = (
    "install it and run virtbackup from a virtualenv made from /usr/bin/python3 "
    "with --system-site-packages (contrib/setup-host.sh does both)"
)


def import_libvirt() -> ModuleType:
    try:
        import libvirt
    except ImportError as err:
        raise MissingComponent(
            f"the libvirt Python bindings cannot be imported ({err})",
            f"apt-get install python3-libvirt, then {_VENV_HINT}",
        ) from None
    module: ModuleType = libvirt
    return module


def import_guestfs() -> ModuleType:
    try:
        import guestfs
    except ImportError as err:
        raise MissingComponent(
            f"the libguestfs Python bindings cannot be imported ({err})",
            f"apt-get install python3-guestfs, then {_VENV_HINT}",
        ) from None
    module: ModuleType = guestfs
    return module
