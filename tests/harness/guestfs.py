"""The real libguestfs appliance, launched through the distribution's Python bindings."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.real import unavailable


@pytest.fixture(scope="session")
def guestfs_module() -> Any:
    try:
        import guestfs
    except ImportError as err:
        unavailable("guestfs bindings", f"{err} (apt-get install python3-guestfs)")
    return guestfs


@pytest.fixture(scope="session")
def guestfs_works(guestfs_module: Any) -> None:
    """Launch the appliance once with no disks: builds it (first run) and proves it boots."""
    g = guestfs_module.GuestFS(python_return_dict=True)
    try:
        g.add_drive_scratch(16 * 1024 * 1024)
        g.launch()
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
