"""Benchmark of `backup --skip-free` on the data-path benchmark's reference image.

    LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg \\
        /usr/bin/python3 bench/bench_skip_free.py [--work DIR] [--formats raw,qcow2]

The reference (bench/datapath_images.py: 8 GiB sparse ext4, ~1.5 GiB of host files of
which a fifth were deleted again, their blocks keeping the data) is built once and cached
in --work. For each format it measures, through the engine (no libvirt domain needed):
- `files`: the live files as `tar | lz4 -1` (the goal: within 15 % of this);
- `plain`: virtbackup's plain backup (stores the deleted garbage too);
- `skip-free`: the --skip-free backup (overlay, trim in the appliance, qemu-img convert,
  stream), with the time of each part.
and prints a markdown table. The image is only read (its mtime and size are checked).
Run as root; nothing else should load the machine meanwhile.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from datapath_images import allocated, reference_qcow2, reference_raw  # noqa: E402

from virtbackup.core.model import Method  # noqa: E402
from virtbackup.core.progress import LogSteps, NullProgress  # noqa: E402
from virtbackup.engine.datapath.disk_backup import DiskSource, back_up_disks  # noqa: E402
from virtbackup.engine.methods.image_source import Consistency, StableImages  # noqa: E402
from virtbackup.engine.methods.skip_free import SkipFree, compacted  # noqa: E402
from virtbackup.engine.stores.local import LocalStore  # noqa: E402

MiB = 1 << 20


def files_lz4(image: Path) -> int:
    """Bytes of `tar` of the live files through `lz4 -1`: the image mounted read-only."""
    mnt = tempfile.mkdtemp(prefix="vbbench-files-")
    subprocess.run(["mount", "-o", "loop,ro,noload", str(image), mnt], check=True)
    try:
        tar = subprocess.Popen(["tar", "-cf", "-", "-C", mnt, "."], stdout=subprocess.PIPE)
        lz4 = subprocess.run(
            ["lz4", "-1", "-c", "-"], stdin=tar.stdout, stdout=subprocess.PIPE, check=True
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0:
            raise SystemExit("tar failed")
        return len(lz4.stdout)
    finally:
        subprocess.run(["umount", mnt], check=True)
        os.rmdir(mnt)


def timed(what: Callable[[], int]) -> tuple[int, float]:
    started = time.monotonic()
    result = what()
    return result, time.monotonic() - started


def back_up(dest: Path, source: DiskSource) -> int:
    result = back_up_disks(
        LocalStore(dest), "bench", "0" * 32, "<domain/>", "offline", [source], NullProgress()
    )
    stored = result.manifest.stored_size
    shutil.rmtree(result.path)
    return stored


class TimedSteps(LogSteps):
    """Prints each step with the time since the previous one."""

    def __init__(self) -> None:
        super().__init__()
        self.last = time.monotonic()

    def step(self, domain: str, text: str) -> None:
        now = time.monotonic()
        print(f"  +{now - self.last:6.1f} s  {text}", file=sys.stderr, flush=True)
        self.last = now


def skip_free_backup(dest: Path, image: Path, fmt: str, size: int) -> tuple[int, float]:
    window = StableImages(
        "bench",
        "0" * 32,
        Method.OFFLINE,
        Consistency.OFFLINE,
        "<domain/>",
        (DiskSource("vda", image, fmt, size),),
    )
    steps = TimedSteps()
    with compacted(window, SkipFree(dest), steps) as disks:
        (source,) = disks.sources
        assert source.free_space_skipped, disks.warnings
        steps.step("bench", f"streaming the copy ({allocated(source.path) / MiB:.0f} MiB)")
        stream_started = time.monotonic()
        stored = back_up(dest, source)
        stream = time.monotonic() - stream_started
    steps.step("bench", "done")
    return stored, stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/virtbackup-bench"))
    parser.add_argument("--formats", default="raw,qcow2")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    raw = reference_raw(args.work)
    images = {"raw": raw, "qcow2": reference_qcow2(args.work)}
    files, files_s = timed(lambda: files_lz4(raw))
    rows = []
    for fmt in args.formats.split(","):
        image = images[fmt]
        stamp = (image.stat().st_mtime_ns, image.stat().st_size)
        size = raw.stat().st_size
        dest = Path(tempfile.mkdtemp(prefix="vbbench-skipfree-", dir=args.work))
        try:
            plain, plain_s = timed(lambda: back_up(dest, DiskSource("vda", image, fmt, size)))  # noqa: B023
            started = time.monotonic()
            skipped, stream_s = skip_free_backup(dest, image, fmt, size)
            skipped_s = time.monotonic() - started
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        if (image.stat().st_mtime_ns, image.stat().st_size) != stamp:
            raise SystemExit(f"{image} changed!")
        rows.append((fmt, allocated(image), plain, plain_s, skipped, skipped_s, stream_s))
    print(f"\nlive files, tar | lz4 -1: {files / MiB:.0f} MiB ({files_s:.0f} s)\n")
    print(
        "| image | allocated | plain stored | plain time | --skip-free stored | vs files "
        "| --skip-free time (of it streaming) |"
    )
    print("|---|---|---|---|---|---|---|")
    for fmt, alloc, plain, plain_s, skipped, skipped_s, stream_s in rows:
        print(
            f"| {fmt} | {alloc / MiB:.0f} MiB | {plain / MiB:.0f} MiB | {plain_s:.0f} s "
            f"| {skipped / MiB:.0f} MiB | {100 * (skipped / files - 1):+.1f} % "
            f"| {skipped_s:.0f} s ({stream_s:.0f} s) |"
        )


if __name__ == "__main__":
    main()
