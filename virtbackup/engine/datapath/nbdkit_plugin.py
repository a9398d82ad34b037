"""The nbdkit Python plugin that serves one disk of a backup, read-only.

nbdkit loads this file (`nbdkit python nbdkit_plugin.py backup=DIR disk=vda ...`, as
adapters/nbdkit_server starts it); virtbackup itself never imports it. The only module
that imports `nbdkit`. Parameters:

    backup=DIR              the backup directory (DEST/<domain>/<stamp>)
    disk=TARGET             which of its disks
    identity=FILE           the age identity of an encrypted backup
    allowed_signers=FILE    signatures required as `--allowed-signers` requires them
    allow_unsigned=1        ... unless the backup is unsigned

The backup is opened and checked once, before nbdkit listens (a bad one stops nbdkit
with its one-line reason on stderr). Every read is answered from frames checked against
their digests (engine/datapath/disk_reader.py); a frame that cannot be had or does not
match is an I/O error for that read, its reason logged, never wrong bytes. Extents tell
clients where the zero frames are.
"""

import errno
import sys
from pathlib import Path
from typing import Any

import nbdkit  # type: ignore[import-not-found]  # exists only inside nbdkit

from virtbackup.core.backup_errors import CorruptBackup
from virtbackup.core.errors import VirtbackupError
from virtbackup.engine.datapath.disk_reader import DiskReader, disk_reader
from virtbackup.engine.stores.backup_access import Trust, open_backup
from virtbackup.engine.stores.local import LocalFiles

API_VERSION = 2
PARAMETERS = ("backup", "disk", "identity", "allowed_signers", "allow_unsigned")
ERROR_PREFIX = "virtbackup: "  # how the server's lines that are ours start

_settings: dict[str, str] = {}
_open: list[Any] = []  # the reader's context, closed when nbdkit unloads the plugin
_reader: list[DiskReader] = []


def thread_model() -> int:
    return int(nbdkit.THREAD_MODEL_PARALLEL)


def config(key: str, value: str) -> None:
    if key not in PARAMETERS:
        raise RuntimeError(f"unknown parameter {key}")
    _settings[key] = value


def config_complete() -> None:
    if "backup" not in _settings or "disk" not in _settings:
        raise RuntimeError("backup= and disk= are required")
    identity = _settings.get("identity")
    signers = _settings.get("allowed_signers")
    trust = Trust(Path(signers) if signers else None, _settings.get("allow_unsigned") == "1")
    try:
        opened = open_backup(
            LocalFiles(Path(_settings["backup"])), Path(identity) if identity else None, trust
        )
        reading = disk_reader(opened, _settings["disk"])
        _reader.append(reading.__enter__())
        _open.append(reading)
    except VirtbackupError as err:
        _say(str(err))
        raise RuntimeError(str(err)) from None


def cleanup() -> None:
    for reading in _open:
        reading.__exit__(None, None, None)


def open(readonly: bool) -> int:  # noqa: A001  (the name nbdkit calls)
    return 1


def get_size(handle: int) -> int:
    return _reader[0].size


def can_multi_conn(handle: int) -> bool:
    return True  # read-only: every connection sees the same bytes


def can_extents(handle: int) -> bool:
    return True


def is_rotational(handle: int) -> bool:
    return False


def pread(handle: int, buf: Any, offset: int, flags: int) -> None:
    try:
        _reader[0].read_into(memoryview(buf), offset)
    except CorruptBackup as err:
        _say(str(err))  # the reason the caller reports
        nbdkit.set_error(errno.EIO)
        raise RuntimeError(str(err)) from None


def extents(handle: int, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    zero = int(nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO)
    return [
        (extent.offset, extent.length, zero if extent.zero else 0)
        for extent in _reader[0].extents(offset, count)
    ]


def _say(line: str) -> None:
    print(f"{ERROR_PREFIX}{line}", file=sys.stderr, flush=True)
