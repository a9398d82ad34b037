"""The real libguestfs appliance, launched through the distribution's Python bindings."""

import os
import shlex
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.real import unavailable
from virtbackup.adapters.guestfs_launch import DEFAULT_LAUNCH_TIMEOUT, launch_bounded


@pytest.fixture(scope="session")
def guestfs_module() -> Any:
    try:
        import guestfs
    except ImportError as err:
        unavailable("guestfs bindings", f"{err} (apt-get install python3-guestfs)")
    return guestfs


@pytest.fixture(scope="session")
def guestfs_works(guestfs_module: Any) -> None:
    """Launch the appliance once with no disks: builds it (first run) and proves it boots,
    bounded like virtbackup's own launches (a broken KVM may hang instead of failing)."""
    g = guestfs_module.GuestFS(python_return_dict=True)
    try:
        g.add_drive_scratch(16 * 1024 * 1024)
        launch_bounded(g, 2 * DEFAULT_LAUNCH_TIMEOUT)  # the first launch builds it too
    except RuntimeError as err:
        settings = os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "")
        unavailable("guestfs appliance", f"{err} (LIBGUESTFS_BACKEND_SETTINGS={settings!r})")
    finally:
        g.close()


@pytest.fixture
def guestfs_handle(guestfs_module: Any, guestfs_works: None) -> Iterator[Callable[..., Any]]:
    """Open handles on images: `open_images([path, ...], readonly=True)` -> launched handle."""
    handles: list[Any] = []

    def open_images(images: list[Path], *, readonly: bool = True, fmt: str | None = None) -> Any:
        g = guestfs_module.GuestFS(python_return_dict=True)
        handles.append(g)
        for image in images:
            g.add_drive_opts(str(image), readonly=readonly, format=fmt or _format_of(image))
        g.launch()
        return g

    yield open_images
    for g in handles:
        g.close()


def _format_of(image: Path) -> str:
    return "qcow2" if image.suffix == ".qcow2" else "raw"


# How the broken KVM of a nested host misbehaves differs from machine to machine (an
# abort at once on one, a launch that spins for ever on another), so neither is tried for
# real: a fake qemu (LIBGUESTFS_HV) answers libguestfs's capability queries through the
# real qemu and misbehaves only when asked to boot the appliance.
FAKE_QEMU = """#!/bin/sh
case " $* " in
  *" -kernel "*) ;;
  *) exec {real} "$@" ;;
esac
{behaviour}
"""
# What qemu printed on a nested host when KVM was used (captured by the events there).
KVM_ABORT = [
    "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69",
    "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion "
    "`ret == cpu->kvm_msr_buf->nmsrs' failed.",
]
ABORT = "\n".join(f"echo {shlex.quote(line)} >&2" for line in KVM_ABORT) + "\nkill -ABRT $$"
# A child of its own (a subshell keeps the script's command line, so it can be found)
HANG = "(while :; do sleep 1; done) &\nwait"


def fake_qemu(directory: Path, behaviour: str) -> Path:
    real = shutil.which("qemu-system-x86_64")
    assert real, "qemu-system-x86 is not installed"
    path = directory / "fake-qemu"
    path.write_text(FAKE_QEMU.format(real=real, behaviour=behaviour))
    path.chmod(0o755)
    return path


def processes_running(path: Path) -> list[int]:
    """PIDs whose command line names `path` (the fake qemu and its children)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(path).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found
