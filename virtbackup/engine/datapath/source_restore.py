"""`restore --to-source`: check every network and block source before anything is
written, then copy each restored image into its source (core/source_write.py says which
disks and by what name).

A source is refused when a running domain uses it (its own domain must be shut off or
undefined), when its size is not the disk's recorded size, and, for a block device,
when the kernel says another user holds it (a mount, a device mapper, anything that
opened it exclusively). The device is then held exclusively while it is written, so
that nothing mounts it meanwhile. An NBD server's other clients cannot be seen from
here: only the domains of this host are checked.
"""

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from virtbackup.adapters import images
from virtbackup.adapters.hypervisor.connection import connect
from virtbackup.core.manifest import Manifest
from virtbackup.core.source_write import SourceRefused, SourceTarget, source_target


def checked_sources(manifest: Manifest, domain_xml: str, uri: str) -> list[SourceTarget]:
    """The sources restore --to-source writes, each checked; SourceRefused for the first
    that must not be written."""
    sources = [
        target for disk in manifest.disks if (target := source_target(domain_xml, disk)) is not None
    ]
    _refuse_used_by_running_domains(sources, uri)
    for source in sources:
        size = images.image_info(source.qemu_name, source.format, force_share=True).virtual_size
        if size != source.virtual_size:
            raise SourceRefused(
                f"{source.target}: {source.source} holds {size} bytes, the backed-up disk "
                f"{source.virtual_size}: not written"
            )
        if source.device is not None:
            with _held_exclusively(source):
                pass
    return sources


def write_sources(sources: Sequence[SourceTarget], restored: dict[str, Path]) -> None:
    """Copy each restored image (by target) into its checked source."""
    for source in sources:
        with _held_exclusively(source):
            images.write_into(str(restored[source.target]), source.format, source.qemu_name)


def _refuse_used_by_running_domains(sources: Sequence[SourceTarget], uri: str) -> None:
    with connect(uri, readonly=True) as hypervisor:
        for domain in hypervisor.active_domains():
            used = {disk.location for disk in domain.live_disks().values()}
            for source in sources:
                if source.source in used:
                    raise SourceRefused(
                        f"{source.target}: {source.source} is in use by the running domain "
                        f"{domain.name}: not written",
                        "shut it off first",
                    )


@contextmanager
def _held_exclusively(source: SourceTarget) -> Iterator[None]:
    """Hold a block device open exclusively (O_EXCL); nothing for a network source."""
    if source.device is None:
        yield
        return
    try:
        fd = os.open(source.device, os.O_RDONLY | os.O_EXCL)
    except OSError as err:
        raise SourceRefused(
            f"{source.target}: {source.device} is held by another user ({err.strerror}: "
            "mounted, or opened exclusively): not written"
        ) from None
    try:
        yield
    finally:
        os.close(fd)
