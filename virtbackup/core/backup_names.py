"""The names a backup may hold, as rules shared by the writer and every reader.

A backup comes back from remotes, old disks and other hosts, and restore runs as root:
a disk target or format read from a manifest builds a file name under `--to`, so each
is checked against what libvirt and the writer can produce, never merely trusted.

- Disk targets are libvirt's disk names: a bus prefix (``fd``, ``hd``, ``sd``, ``vd``,
  ``xvd``, ``ubd``, the prefixes libvirt's disk name parser knows) and 1 to 4 letters
  (``vda`` ... ``sdzzz``), optionally a partition number as Xen guests use (``xvda1``).
- Formats are libvirt's storage formats for a disk driver (``raw``, ``qcow2``, ...).
- The stream file of a disk is ``<target>.<format>.lz4`` (``.age`` added when encrypted).
"""

import re

AGE_SUFFIX = ".age"
STREAM_SUFFIX = ".lz4"

_TARGET = re.compile(r"(fd|hd|sd|vd|xvd|ubd)[a-z]{1,4}([1-9][0-9]{0,2})?")

# libvirt's virStorageFileFormat values that can name a disk image's driver type
DISK_FORMATS = frozenset(
    {
        "raw",
        "qcow2",
        "qcow",
        "qed",
        "vmdk",
        "vdi",
        "vpc",
        "vhd",
        "vhdx",
        "luks",
        "bochs",
        "cloop",
        "dmg",
        "iso",
        "ploop",
        "cow",
        "fat",
    }
)

MAX_NAME_BYTES = 255  # a file or directory name on Linux file systems


def is_disk_target(name: str) -> bool:
    return _TARGET.fullmatch(name) is not None


def is_disk_format(name: str) -> bool:
    return name in DISK_FORMATS


def stream_file_name(target: str, fmt: str, encrypted: bool = False) -> str:
    return f"{target}.{fmt}{STREAM_SUFFIX}" + (AGE_SUFFIX if encrypted else "")


def restored_file_name(target: str, fmt: str) -> str:
    return f"{target}.{fmt}"


def is_plain_name(name: str) -> bool:
    """A name of a file directly inside a directory: no path, not hidden, no NUL or
    control character, not longer than a file system allows."""
    return (
        bool(name)
        and not name.startswith(".")
        and "/" not in name
        and not any(ord(c) < 0x20 or c == "\x7f" for c in name)
        and _utf8_size(name) <= MAX_NAME_BYTES
    )


def is_domain_name(name: str) -> bool:
    """A domain name libvirt accepts (no '/') that can also be a directory name."""
    return (
        bool(name)
        and name not in (".", "..")
        and "/" not in name
        and not any(ord(c) < 0x20 or c == "\x7f" for c in name)
        and _utf8_size(name) <= MAX_NAME_BYTES
    )


def _utf8_size(text: str) -> int:
    """Bytes of `text` in UTF-8; beyond any bound for text that has no UTF-8 form."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return 1 << 62
