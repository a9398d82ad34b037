"""Benchmark of `virtbackup shrink` (in place) against `virt-sparsify --in-place`.

    LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg \\
        /usr/bin/python3 bench/bench_shrink.py [--work DIR] [--size-gib 2] [--data-mib 256]

Builds (once, then reuses) a raw and a qcow2 image, each a whole-disk ext4 filesystem
holding host files and twice as much random data that was written and deleted again,
and, with --lvm, the shrink tests' small partitioned disk (ext4, swap, LVM with xfs, a
swap LV and used-then-freed extents). For each image it makes two identical copies
(allocated where the original is), runs `virt-sparsify --in-place` on one and
virtbackup's in-place shrink (the engine, in a child process) on the other, in
alternating order, and prints a markdown table: time and resulting allocated size.
Run as root; nothing else should load the machine meanwhile.
"""

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.images import build_fs_image  # noqa: E402
from shrink_helpers import allocated, build_guest_disks, sparse_copy  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30

SHRINK_CHILD = """
import sys
from virtbackup.core.progress import NullProgress
from virtbackup.core.shrink_plan import ShrinkOptions
from virtbackup.engine.shrink import Image, shrink_in_place
images = [Image(f"vd{chr(97 + i)}", path, fmt) for i, (path, fmt) in
          enumerate(zip(sys.argv[1::2], sys.argv[2::2]))]
shrink_in_place(images, ShrinkOptions(), NullProgress(), "bench")
"""


@dataclass
class Row:
    image: str
    tool: str
    seconds: float
    before: int
    after: int


def build(work: Path, size: int, data: int, lvm: bool) -> list[tuple[str, Path, str]]:
    images: list[tuple[str, Path, str]] = []
    for fmt in ("raw", "qcow2"):
        path = work / f"ext4-{size // GiB}g.{fmt}"
        if not path.exists():
            print(f"building {path} ...", file=sys.stderr)
            partial = path.with_name(f".{path.name}.partial")
            build_fs_image(partial, size=size, fs="ext4", fmt=fmt, content=data, deleted=2 * data)
            partial.rename(path)
        images.append((f"{fmt}, {size // GiB} GiB ext4", path, fmt))
    if lvm:
        path = work / "lvm-xfs-swap.qcow2"
        if not path.exists():
            import guestfs

            print(f"building {path} ...", file=sys.stderr)
            build_guest_disks(guestfs, [(path, "qcow2", "vgbench")])
        images.append(("qcow2, 160 MiB ext4+swap+LVM/xfs", path, "qcow2"))
    return images


def run_sparsify(path: Path) -> float:
    started = time.monotonic()
    subprocess.run(["virt-sparsify", "--in-place", "-q", str(path)], check=True)
    return time.monotonic() - started


def run_shrink(path: Path, fmt: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", SHRINK_CHILD, str(path), fmt], check=True, cwd=ROOT)
    return time.monotonic() - started


def measure(name: str, path: Path, fmt: str, work: Path, sparsify_first: bool) -> list[Row]:
    copies = {
        tool: sparse_copy(path, work / f"copy-{tool}{path.suffix}")
        for tool in ("virt-sparsify", "virtbackup")
    }
    runs = {
        "virt-sparsify": lambda: run_sparsify(copies["virt-sparsify"]),
        "virtbackup": lambda: run_shrink(copies["virtbackup"], fmt),
    }
    order = ["virt-sparsify", "virtbackup"] if sparsify_first else ["virtbackup", "virt-sparsify"]
    rows = []
    try:
        for tool in order:
            before = allocated(copies[tool])
            seconds = runs[tool]()
            rows.append(Row(name, tool, seconds, before, allocated(copies[tool])))
    finally:
        for copy in copies.values():
            copy.unlink(missing_ok=True)
    return sorted(rows, key=lambda row: row.tool != "virt-sparsify")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/virtbackup-bench-shrink"))
    parser.add_argument("--size-gib", type=int, default=2)
    parser.add_argument("--data-mib", type=int, default=256)
    parser.add_argument("--lvm", action="store_true", help="Also the partitioned LVM disk.")
    args = parser.parse_args()
    if os.environ.get("LIBGUESTFS_BACKEND_SETTINGS") is None:
        print("note: LIBGUESTFS_BACKEND_SETTINGS unset (force_tcg is needed on nested hosts)")
    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for index, (name, path, fmt) in enumerate(
        build(args.work, args.size_gib * GiB, args.data_mib * MiB, args.lvm)
    ):
        rows += measure(name, path, fmt, args.work, sparsify_first=index % 2 == 0)
    print("| image | tool | time | allocated before | allocated after |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.image} | {row.tool} | {row.seconds:.1f} s | {row.before / MiB:.1f} MiB "
            f"| {row.after / MiB:.1f} MiB |"
        )


if __name__ == "__main__":
    main()
