"""What to call an open file in a message: its path, also when it was opened from a
descriptor (`open(fd)` names the file by the descriptor's number, which tells the user
nothing)."""

import os
from typing import IO


def file_label(out: IO[bytes], fallback: str = "the backup file") -> str:
    name = getattr(out, "name", None)
    if isinstance(name, str | bytes):
        return os.fsdecode(name)
    try:
        target = os.readlink(f"/proc/self/fd/{out.fileno()}")
    except (OSError, ValueError, AttributeError):
        return fallback
    return target if target.startswith("/") else fallback  # not "pipe:[1234]"
