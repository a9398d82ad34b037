"""Network disks in a backup: how their source is recorded, and what restore says
about them.

A network disk (NBD, iSCSI, RBD, Gluster, HTTP) is recorded in the manifest's `source`
as `protocol://host:port/name` (core/diskxml.network_url): where its data was, never its
credentials. Restore writes every disk as an image file under `--to`, network disks
included; it writes into a network volume only when asked to with `--to-source`
(core/source_write.py), else putting the data back is the user's step.
"""

# libvirt's network disk protocols, as the source's URL scheme
NETWORK_PROTOCOLS = frozenset(
    {"nbd", "iscsi", "rbd", "gluster", "http", "https", "ftp", "ftps", "tftp", "ssh", "vxhs"}
)


def is_network_source(source: str) -> bool:
    """Whether a manifest's disk `source` names a network disk (a host path is absolute)."""
    scheme, separator, _rest = source.partition("://")
    return bool(separator) and scheme in NETWORK_PROTOCOLS


def put_back_hint(target: str, source: str, restored: str, fmt: str) -> str:
    """What to do to get a restored network disk's data back onto its volume."""
    return (
        f"{target} was the network disk {source}: restored to {restored} only, the volume "
        "is not written; to put it back, with the domain shut off: restore --to-source, or "
        f"qemu-img convert -n -f {fmt} -O raw {restored} VOLUME (-O qcow2 for a qcow2 "
        "volume; VOLUME as qemu names it, e.g. iscsi://HOST/IQN/LUN, "
        "nbd+unix:///EXPORT?socket=PATH, rbd:POOL/IMAGE)"
    )
