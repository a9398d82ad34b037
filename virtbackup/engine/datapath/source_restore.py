"""`restore --to-source`: check every network and block source before anything is
written, then copy each restored image into its source (core/source_write.py says which
disks and by what name).

The backup's own domain must be shut off or undefined, and a source is refused when
another running domain of this host uses it, when its size is not the disk's recorded
size, and, for a block device, when the kernel says another user holds it (a mount, a
device mapper, anything that opened it exclusively). The device is then held
exclusively while it is written, so that nothing mounts it meanwhile. An NBD server's
other clients cannot be seen from here: only the domains of this host are checked. The
secret of an iSCSI source with CHAP lives, for each qemu-img that needs it, in a 0600
file in a private directory.
"""

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from virtbackup.adapters import images
from virtbackup.adapters.hypervisor.connection import Hypervisor, SecretUnreadable, connect
from virtbackup.core.manifest import Manifest
from virtbackup.core.source_write import (
    PUT_BACK,
    SECRET_ID,
    SourceRefused,
    SourceTarget,
    source_target,
)


def checked_sources(manifest: Manifest, domain_xml: str, uri: str) -> list[SourceTarget]:
    """The sources restore --to-source writes, each checked; SourceRefused for the first
    that must not be written."""
    with connect(uri) as hypervisor:
        defined = hypervisor.find(manifest.domain_uuid)
        defined_xml = None if defined is None else defined.config_xml()
        sources = [
            target
            for disk in manifest.disks
            if (target := source_target(domain_xml, disk, defined_xml)) is not None
        ]
        if sources and defined is not None and defined.is_active():
            raise SourceRefused(
                f"{defined.name} is running: restore --to-source writes only into the "
                "sources of a domain that is shut off or undefined",
                "shut it off first",
            )
        _refuse_used_by_running_domains(sources, hypervisor)
        for source in sources:
            with _secret_object(source, hypervisor) as objects:
                info = images.image_info(
                    source.qemu_name, source.format, force_share=True, objects=objects
                )
            if info.virtual_size != source.virtual_size:
                raise SourceRefused(
                    f"{source.target}: {source.source} holds {info.virtual_size} bytes, the "
                    f"backed-up disk {source.virtual_size}: not written"
                )
            with _held_exclusively(source):
                pass
    return sources


def write_sources(sources: Sequence[SourceTarget], restored: dict[str, Path], uri: str) -> None:
    """Copy each restored image (by target) into its checked source."""
    if not sources:
        return
    with connect(uri) as hypervisor:
        for source in sources:
            with _held_exclusively(source), _secret_object(source, hypervisor) as objects:
                image = str(restored[source.target])
                images.write_into(image, source.format, source.qemu_name, objects)


def _refuse_used_by_running_domains(
    sources: Sequence[SourceTarget], hypervisor: Hypervisor
) -> None:
    for name, used in hypervisor.running_disk_locations().items():
        for source in sources:
            if source.source in used:
                raise SourceRefused(
                    f"{source.target}: {source.source} is in use by the running domain "
                    f"{name}: not written",
                    "shut it off first",
                )


@contextmanager
def _secret_object(source: SourceTarget, hypervisor: Hypervisor) -> Iterator[tuple[str, ...]]:
    """qemu's `--object` arguments giving it the source's secret by file; none without."""
    if source.secret is None:
        yield ()
        return
    try:
        value = hypervisor.secret_value(source.secret)
    except SecretUnreadable:
        # libvirt's message names the secret's usage, which we never repeat
        raise SourceRefused(
            f"{source.target}: cannot read the libvirt secret that opens {source.source} "
            "(no such secret, or a private one): not written",
            PUT_BACK,
        ) from None
    with tempfile.TemporaryDirectory(prefix="virtbackup-secret-") as private:  # 0700
        path = Path(private) / "secret"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(value)
        yield ("--object", f"secret,id={SECRET_ID},file={path},format=raw")


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
