"""Running and timing the benchmark's commands: pipelines without a shell, page cache
control, and the machine's bounds (lz4 -1 on all cores, cold read throughput)."""

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from datapath_images import data_extents

MiB = 1 << 20
BLOCK = 4 * MiB


@dataclass
class Measured:
    wall: float
    cpu: float
    max_rss_kib: int
    other_cpu: float = 0.0  # CPU seconds the rest of the machine used meanwhile

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu / self.wall if self.wall else 0.0

    @property
    def other_percent(self) -> float:
        return 100 * self.other_cpu / self.wall if self.wall else 0.0


def busy_seconds() -> float:
    """CPU seconds all CPUs have been busy since boot (/proc/stat, idle and iowait not)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def load_average() -> float:
    return os.getloadavg()[0]


def run(pipeline: list[list[str]], output: Path | None = None, cwd: Path | None = None) -> Measured:
    """Run argv lists connected by pipes (no shell); the last one's stdout goes to `output`
    (or nowhere). Wall time, CPU time and peak RSS (the largest of the processes)."""
    out_file = open(output, "wb") if output else None  # closed below
    busy = busy_seconds()
    start = time.monotonic()
    processes: list[subprocess.Popen[bytes]] = []
    previous = None
    try:
        for number, argv in enumerate(pipeline):
            last = number == len(pipeline) - 1
            stdout = (out_file or subprocess.DEVNULL) if last else subprocess.PIPE
            process = subprocess.Popen(argv, stdin=previous, stdout=stdout, cwd=cwd)
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
                raise SystemExit(f"{process.args} exited {process.returncode}")
            cpu += usage.ru_utime + usage.ru_stime
            max_rss = max(max_rss, usage.ru_maxrss)
        wall = time.monotonic() - start
        other = max(0.0, busy_seconds() - busy - cpu)
    finally:
        if out_file:
            out_file.close()
    return Measured(wall, cpu, max_rss, other)


def needed_ranges(source: Path) -> list[tuple[int, int]]:
    """What a sparse-aware reader must read: the data extents of a file, all of a device."""
    if source.is_file():
        return list(data_extents(source))
    with open(source, "rb") as device:
        return [(0, device.seek(0, os.SEEK_END))]


def read_ranges(source: Path, ranges: list[tuple[int, int]]) -> float:
    """Read the ranges (4 MiB at a time into one buffer); seconds taken."""
    buffer = memoryview(bytearray(BLOCK))
    fd = os.open(source, os.O_RDONLY)
    start = time.monotonic()
    try:
        for offset, length in ranges:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_SEQUENTIAL)
            end = offset + length
            while offset < end:
                got = os.preadv(fd, [buffer[: min(BLOCK, end - offset)]], offset)
                if not got:
                    break
                offset += got
    finally:
        os.close(fd)
    return time.monotonic() - start


def lz4_rate(sample: Path, processes: int) -> float:
    """Bytes/s of `lz4 -1` over `sample` (warm) with `processes` instances at once."""
    read_ranges(sample, [(0, sample.stat().st_size)])  # into the page cache
    argv = ["lz4", "-1", "-q", "-c", str(sample)]
    start = time.monotonic()
    running = [subprocess.Popen(argv, stdout=subprocess.DEVNULL) for _ in range(processes)]
    for process in running:
        if process.wait():
            raise SystemExit(f"{argv} exited {process.returncode}")
    return processes * sample.stat().st_size / (time.monotonic() - start)
