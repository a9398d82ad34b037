"""Benchmark of the data path against the seed pipeline and this machine's bounds (run on
demand, as root, on a quiet machine; not part of the test suite).

    /usr/bin/python3 bench/bench_datapath.py                 # all cases, cold and warm
    /usr/bin/python3 bench/bench_datapath.py --cases sparse --cache warm    # a quick look
    /usr/bin/python3 bench/bench_datapath.py --cases sparse,full --repeat 3   # medians

Images are built once and cached in --work (default /var/tmp/virtbackup-bench, see
datapath_images.py): the 8 GiB sparse reference, the same as qcow2 and behind a read-only
loop device, a mostly-full 2 GiB image, and 1/8/32 GiB sparse images holding the same
~0.7 GiB of files. For each image and cache state (cold: page cache dropped before every
run; warm: the data read once before every run) it times the seed pipeline
`cat IMG | lz4 -1 - -c > OUT`, virtbackup's backup with 1..N workers (the engine, in a
child process), `lz4 -d` and `virtbackup restore` of the stream. The bound of an image is
its allocated bytes over the throughput of `lz4 -1` on all cores (N processes on a dense
sample of the reference's data) and, cold, at least the time to read what must be read
(the data extents of a file, all of a device). Prints markdown tables.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from datapath_images import (
    GiB,
    MiB,
    allocated,
    full_raw,
    lz4_sample,
    reference_qcow2,
    reference_raw,
    size_raw,
)
from datapath_measure import (
    Measured,
    drop_caches,
    load_average,
    lz4_rate,
    needed_ranges,
    read_ranges,
    run,
)

ROOT = Path(__file__).resolve().parent.parent

BACKUP_CHILD = """
import sys
from pathlib import Path
from virtbackup.engine.stores.local import LocalStore
from virtbackup.core.progress import NullProgress
from virtbackup.engine.datapath.disk_backup import DiskSource, back_up_disks
from virtbackup.engine.datapath.stream_writer import WriterOptions
dest, source, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
with open(source, "rb") as f:
    size = f.seek(0, 2)
disk = DiskSource("vda", source, "raw", size)
back_up_disks(
    LocalStore(dest), "bench", "00000000-0000-0000-0000-000000000000", "<domain/>",
    "offline", [disk], NullProgress(), WriterOptions(workers=workers))
"""

CASES = {
    "sparse": "8 GiB sparse raw, 1.8 GiB allocated (reference)",
    "qcow2": "the reference as qcow2 file",
    "loop": "the reference as block device (loop)",
    "full": "2 GiB raw, ~95 % full",
    "size1": "1 GiB sparse raw, 0.7 GiB of files",
    "size8": "8 GiB sparse raw, 0.7 GiB of files",
    "size32": "32 GiB sparse raw, 0.7 GiB of files",
}


@dataclass
class CaseResult:
    name: str
    source: Path
    virtual: int
    allocated: int
    needed: int  # bytes a sparse-aware reader reads
    cold_read: float | None = None  # seconds to read them cold
    backup: dict[tuple[str, str], Measured] = field(default_factory=dict)  # (cache, run)
    outputs: dict[tuple[str, str], int] = field(default_factory=dict)
    restore: dict[tuple[str, str], Measured] = field(default_factory=dict)
    spread: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)  # min, max
    durable_copy: float | None = None  # `cp --sparse=always` + `sync` of the image, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/virtbackup-bench"))
    parser.add_argument("--cases", default=",".join(CASES), help=f"of {','.join(CASES)}")
    parser.add_argument("--cache", default="cold,warm", help="cold,warm or one of them")
    parser.add_argument("--workers", default="", help="e.g. 1,2 [default: 1..N]")
    parser.add_argument("--no-restore", action="store_true")
    parser.add_argument("--restore-only", action="store_true", help="time only lz4 -d and restore")
    parser.add_argument("--check", action="store_true", help="cmp every restored image")
    parser.add_argument("--repeat", type=int, default=1, help="runs per number (median)")
    parser.add_argument(
        "--max-load", type=float, default=0.0, help="wait for a lower 1-minute load first"
    )
    args = parser.parse_args()
    cases = [name for name in args.cases.split(",") if name]
    caches = [name for name in args.cache.split(",") if name]
    workers = [int(n) for n in args.workers.split(",") if n] or default_workers()
    unknown = set(cases) - set(CASES) or set(caches) - {"cold", "warm"}
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    args.work.mkdir(parents=True, exist_ok=True)
    runs = args.work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()

    sample = lz4_sample(args.work)
    wait_for_quiet(args.max_load)  # only here: the benchmark's own runs load the machine
    load = load_average()
    cpus = os.cpu_count() or 1
    one_core, all_cores = lz4_rate(sample, 1), lz4_rate(sample, cpus)
    results = []
    for name in cases:
        with case_source(name, args.work) as source:
            result = measure_case(name, source, runs, caches, workers, args)
        results.append(result)
        shutil.rmtree(runs, ignore_errors=True)
        runs.mkdir()

    cli = start_up() if not args.no_restore else None
    print_tables(results, caches, workers, one_core, all_cores, cpus, load, cli)


def default_workers() -> list[int]:
    cpus = os.cpu_count() or 1
    return sorted({1, max(1, cpus // 2), cpus})


def wait_for_quiet(max_load: float) -> None:
    while max_load and load_average() > max_load:
        print(f"load {load_average():.2f} > {max_load}: waiting", file=sys.stderr, flush=True)
        time.sleep(30)


@contextmanager
def case_source(name: str, work: Path) -> Iterator[Path]:
    if name == "sparse":
        yield reference_raw(work)
    elif name == "qcow2":
        yield reference_qcow2(work)
    elif name == "full":
        yield full_raw(work)
    elif name.startswith("size"):
        yield size_raw(work, int(name[len("size") :]))
    else:  # loop
        out = subprocess.run(
            ["losetup", "--find", "--show", "--read-only", str(reference_raw(work))],
            check=True,
            capture_output=True,
            text=True,
        )
        device = Path(out.stdout.strip())
        try:
            yield device
        finally:
            subprocess.run(["losetup", "-d", str(device)], check=True)


def measure_case(
    name: str,
    source: Path,
    runs: Path,
    caches: list[str],
    workers: list[int],
    args: argparse.Namespace,
) -> CaseResult:
    print(f"measuring {name}: {source}", file=sys.stderr, flush=True)
    backing = reference_raw(args.work) if name == "loop" else source
    ranges = needed_ranges(source)
    with open(source, "rb") as f:
        virtual = f.seek(0, os.SEEK_END)
    result = CaseResult(name, source, virtual, allocated(backing), sum(n for _, n in ranges))
    if "cold" in caches:
        drop_caches()
        result.cold_read = read_ranges(source, ranges)

    if args.restore_only:
        dest = runs / "dest-untimed-0"
        dest.mkdir()
        argv = [sys.executable, "-c", BACKUP_CHILD, str(dest), str(source), str(max(workers))]
        run([argv], cwd=ROOT)
        return measure_restore(result, runs, caches, args)
    for cache in caches:
        seed_out = runs / "seed.lz4"
        samples = []
        for _ in range(args.repeat):
            prepare(cache, source, ranges)
            seed = [["cat", str(source)], ["lz4", "-1", "-q", "-", "-c"]]
            samples.append(run(seed, seed_out))
            result.outputs[cache, "seed"] = seed_out.stat().st_size
            seed_out.unlink()
        result.backup[cache, "seed"] = median(samples)
        for count in workers:
            samples = []
            for attempt in range(args.repeat):
                dest = runs / f"dest-{cache}-{count}-{attempt}"
                dest.mkdir()
                prepare(cache, source, ranges)
                argv = [sys.executable, "-c", BACKUP_CHILD, str(dest), str(source), str(count)]
                samples.append(run([argv], cwd=ROOT))
                stream = next(dest.glob("bench/*/vda.raw.lz4"))
                result.outputs[cache, f"w{count}"] = stream.stat().st_size
                if attempt:
                    shutil.rmtree(dest)
            result.backup[cache, f"w{count}"] = median(samples)
    if args.no_restore:
        return result
    return measure_restore(result, runs, caches, args)


def prepare(cache: str, path: Path, what: list[tuple[int, int]]) -> None:
    if cache == "cold":
        drop_caches()
    else:
        read_ranges(path, what)


def median(samples: list[Measured]) -> Measured:
    return sorted(samples, key=lambda m: m.wall)[len(samples) // 2]


def measure_restore(
    result: CaseResult, runs: Path, caches: list[str], args: argparse.Namespace
) -> CaseResult:
    """Time `lz4 -d`, `sync` of its output, and `virtbackup restore` of the first stream."""
    stream = next(runs.glob("dest-*-0/bench/*/vda.raw.lz4"), None)
    if stream is None:
        return result
    source = result.source
    whole_stream = [(0, stream.stat().st_size)]
    for cache in caches:
        by_lz4, restored = runs / "by-lz4.raw", runs / "restored"
        lz4d, synced, ours = [], [], []
        for attempt in range(args.repeat):
            prepare(cache, stream, whole_stream)
            lz4d.append(run([["lz4", "-q", "-d", "-f", str(stream), str(by_lz4)]]))
            synced.append(run([["sync", str(by_lz4)]]))  # as restore fsyncs
            prepare(cache, stream, whole_stream)
            argv = [sys.executable, "-m", "virtbackup", "-q", "restore", str(stream.parent)]
            ours.append(run([[*argv, "--to", str(restored)]], cwd=ROOT))
            if args.check and not attempt:
                for image in (by_lz4, restored / "vda.raw"):
                    cmp = ["cmp", "-s", str(source), str(image)]
                    if subprocess.run(cmp, check=False).returncode:
                        raise SystemExit(f"{image} differs from {source}")
            by_lz4.unlink()
            shutil.rmtree(restored)
        for what, samples in (("lz4 -d", lz4d), ("sync", synced), ("virtbackup", ours)):
            result.restore[cache, what] = median(samples)
            walls = [m.wall for m in samples]
            result.spread[cache, what] = (min(walls), max(walls))
    if source.is_file():
        result.durable_copy = durable_copy(source, runs / "copy.raw", args.repeat)
    return result


def durable_copy(source: Path, copy: Path, repeat: int) -> float:
    """Seconds to write the image itself durably (median): `cp --sparse=always` from the
    page cache, then `sync` of the copy. No decompression, no checks: what any restore
    that ends with the image on disk needs at least, here."""
    walls = []
    for _ in range(repeat):
        read_ranges(source, needed_ranges(source))
        copied = run([["cp", "--sparse=always", str(source), str(copy)]])
        synced = run([["sync", str(copy)]])
        walls.append(copied.wall + synced.wall)
        copy.unlink()
    return sorted(walls)[len(walls) // 2]


def start_up() -> float:
    """Seconds `virtbackup restore` takes to start and exit (median of 3): part of every
    restore."""
    argv = [sys.executable, "-m", "virtbackup", "restore", "--help"]
    return median([run([argv], cwd=ROOT) for _ in range(3)]).wall


def print_tables(
    results: list[CaseResult],
    caches: list[str],
    workers: list[int],
    one_core: float,
    all_cores: float,
    cpus: int,
    load: float,
    cli: float | None,
) -> None:
    timed = [m for r in results for m in [*r.backup.values(), *r.restore.values()]]
    other = sum(m.other_cpu for m in timed) / sum(m.wall for m in timed)
    print(
        f"\n{cpus} CPUs; `lz4 -1`: {one_core / 1e6:.0f} MB/s on 1 core, "
        f"{all_cores / 1e6:.0f} MB/s with {cpus} processes; 1-minute load {load:.2f} at "
        f"the start; other processes used {100 * other:.0f} % CPU on average during the "
        f"timed runs (at most {max(m.other_percent for m in timed):.0f} %)\n"
    )
    print(
        "| image | virtual GiB | allocated MiB | read MiB | cold read s | bound cold s "
        "| bound warm s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        cold = f"{r.cold_read:.2f}" if r.cold_read is not None else "-"
        bound_cold = f"{bound(r, 'cold', all_cores):.2f}" if r.cold_read is not None else "-"
        print(
            f"| {CASES[r.name]} | {r.virtual / GiB:.0f} | {r.allocated / MiB:.0f} "
            f"| {r.needed / MiB:.0f} | {cold} | {bound_cold} "
            f"| {bound(r, 'warm', all_cores):.2f} |"
        )
    if any(r.backup for r in results):
        print_backup_table(results, caches, workers, all_cores)
    if any(r.restore for r in results):
        print_restore_table(results, caches, cli)


def print_backup_table(
    results: list[CaseResult], caches: list[str], workers: list[int], all_cores: float
) -> None:
    top = f"w{max(workers)}"
    names = " | ".join(f"virtbackup {n} worker{'s' if n > 1 else ''} s" for n in workers)
    print(
        f"\n| image | cache | seed s | {names} | CPU % ({max(workers)}) | peak RSS MiB "
        f"| vs seed | vs bound | output vs seed |"
    )
    print("|---|---|---:|" + "---:|" * len(workers) + "---:|---:|---:|---:|---:|")
    for r in results:
        for cache in caches:
            seed = r.backup[cache, "seed"]
            best = r.backup[cache, top]
            times = " | ".join(f"{r.backup[cache, f'w{n}'].wall:.2f}" for n in workers)
            speedups = " / ".join(
                f"{seed.wall / r.backup[cache, f'w{n}'].wall:.1f}x" for n in workers
            )
            rss = max(r.backup[cache, f"w{n}"].max_rss_kib for n in workers) / 1024
            print(
                f"| {CASES[r.name]} | {cache} | {seed.wall:.2f} | {times} "
                f"| {best.cpu_percent:.0f} | {rss:.0f} | {speedups} "
                f"| {best.wall / bound(r, cache, all_cores):.2f}x "
                f"| {r.outputs[cache, top] / r.outputs[cache, 'seed']:.3f} |"
            )


def print_restore_table(results: list[CaseResult], caches: list[str], cli: float | None) -> None:
    if cli is not None:
        print(f"\n`virtbackup restore --help` takes {cli:.2f} s (start-up, part of each restore)")
    print(
        "\n| image | cache | lz4 -d s | lz4 -d + sync s | virtbackup restore s | CPU % "
        "| peak RSS MiB | speed vs lz4 -d | vs lz4 -d + sync | lz4 -d range s "
        "| restore range s | cp + sync s | restore / (cp + sync) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for cache in caches:
            if (cache, "lz4 -d") not in r.restore:
                continue
            lz4d, ours = r.restore[cache, "lz4 -d"], r.restore[cache, "virtbackup"]
            synced = lz4d.wall + r.restore[cache, "sync"].wall
            ranges = " | ".join(
                "{:.2f}-{:.2f}".format(*r.spread[cache, what]) for what in ("lz4 -d", "virtbackup")
            )
            copy = (
                f"{r.durable_copy:.2f} | {ours.wall / r.durable_copy:.2f}"
                if r.durable_copy
                else "- | -"
            )
            print(
                f"| {CASES[r.name]} | {cache} | {lz4d.wall:.2f} | {synced:.2f} | {ours.wall:.2f} "
                f"| {ours.cpu_percent:.0f} | {ours.max_rss_kib / 1024:.0f} "
                f"| {lz4d.wall / ours.wall:.2f}x | {synced / ours.wall:.2f}x | {ranges} | {copy} |"
            )


def bound(result: CaseResult, cache: str, lz4_all_cores: float) -> float:
    compress = result.allocated / lz4_all_cores
    if cache == "cold" and result.cold_read is not None:
        return max(compress, result.cold_read)
    return compress


if __name__ == "__main__":
    main()
