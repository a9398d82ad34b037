"""Benchmark of the data path against the seed pipeline (run on demand, as root).

    /usr/bin/python3 bench/bench_datapath.py [--work DIR] [--size-gib 8] [--data-gib 1.5]

Builds (once, then reuses) a sparse raw image holding an ext4 filesystem filled with host
files of which some are deleted again, then measures, each after dropping the page cache:
the seed pipeline `cat IMG | lz4 - -c > OUT`, virtbackup's backup (the engine, in a child
process), `lz4 -d` and `virtbackup restore`. Prints a markdown table.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GiB = 1 << 30

BACKUP_CHILD = """
import sys
from pathlib import Path
from virtbackup.adapters.store import BackupStore
from virtbackup.core.progress import NullProgress
from virtbackup.engine.backup import DiskSource, back_up_disks
dest, image = Path(sys.argv[1]), Path(sys.argv[2])
disk = DiskSource("vda", image, "raw", image.stat().st_size)
result = back_up_disks(
    BackupStore(dest), "bench", "00000000-0000-0000-0000-000000000000", "<domain/>",
    "offline", [disk], NullProgress())
print(result.path)
"""


@dataclass
class Measured:
    name: str
    wall: float
    cpu: float
    max_rss_kib: int
    output: Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/virtbackup-bench"))
    parser.add_argument("--size-gib", type=float, default=8)
    parser.add_argument("--data-gib", type=float, default=1.5)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    image = args.work / "reference.raw"
    if not image.exists():
        build_image(image, int(args.size_gib * GiB), int(args.data_gib * GiB))
    runs = args.work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    dropped = drop_caches()

    seed_out = runs / "seed.raw.lz4"
    seed = measure("seed: cat \\| lz4", [["cat", str(image)], ["lz4", "-q", "-", "-c"]], seed_out)
    drop_caches()
    dest = runs / "dest"
    dest.mkdir()
    backup = measure(
        "virtbackup backup", [[sys.executable, "-c", BACKUP_CHILD, str(dest), str(image)]], None
    )
    stream = next(dest.glob("bench/*/vda.raw.lz4"))
    backup.output = stream
    drop_caches()
    lz4_restored = runs / "lz4-restored.raw"
    lz4d = measure("lz4 -d", [["lz4", "-q", "-d", str(stream), str(lz4_restored)]], None)
    lz4d.output = lz4_restored
    drop_caches()
    restored_dir = runs / "restored"
    restore = measure(
        "virtbackup restore",
        [
            [
                sys.executable,
                "-m",
                "virtbackup",
                "-q",
                "restore",
                str(stream.parent),
                "--to",
                str(restored_dir),
            ]
        ],
        None,
    )
    restore.output = restored_dir / "vda.raw"

    for restored in (lz4_restored, restore.output):
        if subprocess.run(["cmp", "-s", str(image), str(restored)], check=False).returncode:
            raise SystemExit(f"{restored} differs from {image}")

    print_table(image, [seed, backup, lz4d, restore], seed, lz4d, dropped)


def build_image(image: Path, size: int, data: int) -> None:
    print(f"building {image} ({size / GiB:.1f} GiB, ~{data / GiB:.1f} GiB of host files)")
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    with tempfile.TemporaryDirectory(prefix="vbbench-") as mnt:
        subprocess.run(["mount", "-o", "loop", str(image), mnt], check=True)
        try:
            copied = 0
            number = 0
            for root in ("/usr", "/var/lib", "/opt"):
                for dirpath, _dirs, files in os.walk(root):
                    for name in files:
                        source = Path(dirpath, name)
                        if copied >= data or source.is_symlink() or not source.is_file():
                            continue
                        number += 1
                        target = Path(mnt, f"d{number // 500}", f"{number}-{name}")
                        target.parent.mkdir(exist_ok=True)
                        try:
                            shutil.copyfile(source, target)
                        except OSError:
                            continue
                        copied += target.stat().st_size
                        if number % 5 == 0:  # deleted later: its blocks keep the data
                            target.with_suffix(target.suffix + ".del").touch()
            os.sync()
            for marker in Path(mnt).rglob("*.del"):
                marker.unlink()
                Path(str(marker)[: -len(".del")]).unlink(missing_ok=True)
        finally:
            subprocess.run(["umount", mnt], check=True)


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measure(name: str, pipeline: list[list[str]], output: Path | None) -> Measured:
    """Run argv lists connected by pipes (no shell); the last one's stdout goes to output."""
    out_file = open(output, "wb") if output else subprocess.DEVNULL
    start = time.monotonic()
    processes: list[subprocess.Popen[bytes]] = []
    previous = None
    for number, argv in enumerate(pipeline):
        last = number == len(pipeline) - 1
        process = subprocess.Popen(
            argv, stdin=previous, stdout=out_file if last else subprocess.PIPE
        )
        if previous is not None:
            previous.close()  # the child holds it now
        previous = process.stdout
        processes.append(process)
    cpu = 0.0
    max_rss = 0
    for process in processes:
        _pid, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            raise SystemExit(f"{name}: {process.args} exited {process.returncode}")
        cpu += usage.ru_utime + usage.ru_stime
        max_rss = max(max_rss, usage.ru_maxrss)
    wall = time.monotonic() - start
    if output:
        out_file.close()  # type: ignore[union-attr]
    return Measured(name, wall, cpu, max_rss, output or Path("/dev/null"))


def print_table(
    image: Path, runs: list[Measured], seed: Measured, lz4d: Measured, dropped: bool
) -> None:
    info = image.stat()
    print(
        f"\nimage: {info.st_size / GiB:.1f} GiB sparse raw ext4, "
        f"{info.st_blocks * 512 / GiB:.2f} GiB allocated; {os.cpu_count()} CPUs; "
        f"page cache {'dropped before each run' if dropped else 'NOT dropped (not permitted)'}\n"
    )
    print("| run | wall s | CPU s | peak RSS MiB | output MiB | allocated MiB | vs reference |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for run in runs:
        out = run.output.stat()
        if run in (seed, runs[1]):
            size_ratio = out.st_size / seed.output.stat().st_size
            ref = f"{seed.wall / run.wall:.1f}x faster than seed, size {size_ratio:.4f}x"
        else:
            ref = f"{lz4d.wall / run.wall:.1f}x the speed of lz4 -d"
        print(
            f"| {run.name} | {run.wall:.2f} | {run.cpu:.2f} | {run.max_rss_kib / 1024:.0f} | "
            f"{out.st_size / (1 << 20):.1f} | {out.st_blocks * 512 / (1 << 20):.1f} | {ref} |"
        )


if __name__ == "__main__":
    main()
