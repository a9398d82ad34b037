"""Files that readers must never see half-written: the run summary, the metrics file,
the run records. Written to a temporary file of a unique name beside the target (hidden,
not ending like the target, so that node_exporter's `*.prom` glob skips it), synced,
then renamed over the target; a reader sees the old file or the new one, never a mix."""

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` at once. The temporary file is created afresh
    (O_EXCL, O_NOFOLLOW), so a planted link is never written through; OSError when the
    directory cannot take it (the temporary file is removed then)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.rename(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
