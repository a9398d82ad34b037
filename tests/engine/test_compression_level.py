"""compression_level: LZ4HC frames are smaller on compressible data and stock lz4 reads them."""

import subprocess
from pathlib import Path

from backup_helpers import MiB

from virtbackup.core.progress import NullProgress
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
from virtbackup.engine.datapath.stream_writer import write_stream


def stream(source: Path, out: Path, level: int) -> int:
    with open(out, "wb", buffering=0) as sink:
        result = write_stream(
            source,
            sink,
            NullProgress(),
            "vda",
            WriterOptions(chunk_size=MiB, compression_level=level),
        )
    return result.stored_size


def test_high_compression_is_smaller_and_restores_with_stock_lz4(tmp_path: Path) -> None:
    source = tmp_path / "disk.raw"
    # executables compress a little with the fast mode and more with LZ4HC
    source.write_bytes(Path("/usr/bin/python3.11").read_bytes()[: 3 * MiB])
    fast = stream(source, tmp_path / "fast.lz4", 0)
    high = stream(source, tmp_path / "high.lz4", 9)
    assert high < fast * 0.95
    for name in ("fast.lz4", "high.lz4"):
        out = tmp_path / f"{name}.out"
        subprocess.run(["lz4", "-d", "-q", str(tmp_path / name), str(out)], check=True)
        subprocess.run(["cmp", str(source), str(out)], check=True)
