import errno
import os

import pytest

from virtbackup.core.backup_errors import (
    DestinationFull,
    OutputClosed,
    StoreError,
    write_error,
)


def oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_filesystem_or_quota_is_a_full_destination(code: int) -> None:
    error = write_error(oserror(code), "/dest/web1/vda.raw.lz4")
    assert isinstance(error, DestinationFull)
    assert error.message == "no space left on the backup destination while writing " + (
        "/dest/web1/vda.raw.lz4"
    )
    assert error.hint == "free space there or choose another --dest"


def test_the_caller_says_what_a_full_disk_means_for_it() -> None:
    mine = DestinationFull("no space left while restoring /out/vda", "free space")
    assert write_error(oserror(errno.ENOSPC), "/out/vda", mine) is mine
    other = write_error(oserror(errno.EIO), "/out/vda", mine)
    assert type(other) is StoreError
    assert other.message == f"cannot write /out/vda: {os.strerror(errno.EIO)}"


def test_read_only_and_closed_pipes() -> None:
    read_only = write_error(oserror(errno.EROFS), "/dest")
    assert read_only.message == "cannot write /dest: the filesystem is read-only"
    closed = write_error(oserror(errno.EPIPE), "pipe to age")
    assert isinstance(closed, OutputClosed)
    assert closed.message == "cannot write pipe to age: its reader is gone"
