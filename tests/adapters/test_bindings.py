"""The distribution's bindings are imported lazily, and a missing one is one clear line."""

import subprocess
import sys
from collections.abc import Callable
from types import ModuleType

import pytest

from virtbackup.adapters.guestfs_ops import import_guestfs
from virtbackup.adapters.hypervisor.bindings import import_libvirt
from virtbackup.adapters.nbd_export import import_nbd
from virtbackup.core.errors import ExitCode, MissingComponent


def test_bindings_import_on_this_host() -> None:
    assert hasattr(import_libvirt(), "openReadOnly")
    assert hasattr(import_guestfs(), "GuestFS")
    assert hasattr(import_nbd(), "NBD")


@pytest.mark.parametrize(
    ("module", "loader", "package"),
    [
        ("guestfs", import_guestfs, "python3-guestfs"),
        ("libvirt", import_libvirt, "python3-libvirt"),
        ("nbd", import_nbd, "python3-libnbd"),
    ],
)
def test_missing_binding_names_the_package(
    monkeypatch: pytest.MonkeyPatch, module: str, loader: Callable[[], ModuleType], package: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(MissingComponent) as caught:
        loader()
    assert caught.value.exit_code == ExitCode.USAGE
    assert f"apt-get install {package}" in str(caught.value)
    assert "--system-site-packages" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_help_works_without_the_bindings() -> None:
    # --help must not import libvirt, guestfs or nbd: poison them and run the CLI.
    code = (
        "import sys; sys.modules['libvirt'] = None; sys.modules['guestfs'] = None;"
        "sys.modules['nbd'] = None;"
        "from virtbackup.cli import main; main(['--help'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "Commands:" in result.stdout
