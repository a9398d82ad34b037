"""Benchmark of the deduplicating repository against single-stream backups (run on demand,
as root, on a quiet machine; not part of the test suite).

    /usr/bin/python3 bench/bench_repository.py                        # both images, 30 generations
    /usr/bin/python3 bench/bench_repository.py --cases full --generations 5   # a quick look
    /usr/bin/python3 bench/bench_repository.py --big-sparse            # also a 1 TiB sparse disk
    /usr/bin/python3 bench/bench_repository.py --cases full --patterns random --chunk-size 65536

For each image (the 8 GiB sparse reference and the 2 GiB full image of datapath_images.py)
on a private copy, in one run:
- the first repository backup, the second of the unchanged image, and a stream backup of
  the same image (time, bytes added to DEST, peak RSS);
- generations: before each further backup the copy changes by `--change` of its size, in
  64 KiB pieces at random 64 KiB-aligned places (`random`), or in runs of 1 MiB at random
  places (`clustered`: files written by a filesystem land in extents), then it is backed up
  again; DEST's bytes after all generations against one full backup, and against what the
  stream layout holds (one stream per generation: the sum of what each stream backup of that
  generation takes, measured on the last generation and the first);
- restore of the newest generation from the repository and from a stream backup of the same
  image (cold cache, `virtbackup restore`; `--restore-repeat N`: N times each, alternating,
  the medians: the machine is shared and noisy);
- gc over all generations (nothing to free), then prune to the newest half and gc again.
Every step runs in a child process whose peak RSS is reported. Prints markdown tables.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from datapath_images import GiB, MiB, full_raw, reference_raw
from datapath_measure import Measured, drop_caches, run

ROOT = Path(__file__).resolve().parent.parent
PIECE = 64 << 10
RUN = 1 * MiB

BACKUP_CHILD = """
import sys
from pathlib import Path
from virtbackup.core.progress import NullProgress
from virtbackup.engine.datapath.chunk_pipeline import WriterOptions
from virtbackup.engine.datapath.disk_backup import DiskSource, back_up_disks
from virtbackup.engine.stores.local import LocalStore
dest, source, layout = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
options = WriterOptions(chunk_size=int(sys.argv[4]))
with open(source, "rb") as f:
    size = f.seek(0, 2)
disk = DiskSource("vda", source, "raw", size)
result = back_up_disks(
    LocalStore(dest), "bench", "00000000-0000-0000-0000-000000000000", "<domain/>",
    "offline", [disk], NullProgress(), options, layout=layout)
print(result.path)
"""

CASES = {"sparse": reference_raw, "full": full_raw}


@dataclass
class Step:
    what: str
    measured: Measured
    added: int  # bytes DEST grew by


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/virtbackup-bench"))
    parser.add_argument("--cases", default="sparse,full")
    parser.add_argument("--generations", type=int, default=30)
    parser.add_argument("--change", type=float, default=0.02)
    parser.add_argument("--patterns", default="random,clustered")
    parser.add_argument(
        "--chunk-size", type=int, default=4 * MiB, help="of a new repository (and the streams)"
    )
    parser.add_argument("--big-sparse", action="store_true", help="also a 1 TiB sparse disk")
    parser.add_argument(
        "--restore-repeat",
        type=int,
        default=1,
        help="restore the newest from both layouts this many times, alternating (median)",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for case in args.cases.split(","):
        for pattern in args.patterns.split(","):
            bench_case(case, pattern, args)
    if args.big_sparse:
        bench_big_sparse(args.work)


def bench_case(case: str, pattern: str, args: argparse.Namespace) -> None:
    source = CASES[case](args.work)
    runs = args.work / f"repository-{case}-{pattern}"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    image = runs / "vda.raw"
    subprocess.run(["cp", "--sparse=always", str(source), str(image)], check=True)
    repo, streams = runs / "repo", runs / "streams"
    repo.mkdir()
    streams.mkdir()
    steps = [
        backup_step("first repository backup", repo, image, "repository", args.chunk_size),
        backup_step("second, unchanged", repo, image, "repository", args.chunk_size),
        backup_step("stream backup", streams, image, "stream", args.chunk_size),
    ]
    first_repo, first_stream = steps[0].added, steps[2].added
    rng = random.Random(f"{case}-{pattern}")
    size = image.stat().st_size
    worst_rss, times = 0, []
    for _generation in range(2, args.generations + 1):
        change(image, size, args.change, pattern, rng)
        step = backup_step("generation", repo, image, "repository", args.chunk_size)
        worst_rss = max(worst_rss, step.measured.max_rss_kib)
        times.append(step.measured.wall)
    last_stream = backup_step(
        "stream backup of the newest", streams, image, "stream", args.chunk_size
    )
    stream_total = (first_stream + last_stream.added) / 2 * args.generations
    repo_total = tree_bytes(repo)
    repo_restores, stream_restores = [], []
    for _ in range(args.restore_repeat):
        repo_restores.append(restore_step(newest(repo), runs / "restored-repo", image))
        stream_restores.append(restore_step(newest(streams), runs / "restored-stream", image))
    restore_repo, restore_stream = median_of(repo_restores), median_of(stream_restores)
    gc_all = cli_step(["gc", "--dest", str(repo)], runs)
    keep = max(1, (args.generations + 1) // 2)
    gc_half = cli_step(["prune", "--dest", str(repo), "--keep-last", str(keep)], runs)
    freed = repo_total - tree_bytes(repo)
    print(
        f"\n### {case}: {source.name}, changes {pattern}, {args.generations} generations, "
        f"chunks of {args.chunk_size >> 10} KiB\n"
    )
    print("| step | seconds | added to DEST | peak RSS |")
    print("| --- | ---: | ---: | ---: |")
    for step in [*steps, last_stream]:
        row(step.what, step.measured.wall, mib(step.added), step.measured)
    median_time = sorted(times)[len(times) // 2]
    print(
        f"| generations 2..{args.generations}, median | {median_time:.2f} | | "
        f"{worst_rss // 1024} MiB (worst) |"
    )
    repeat = f" (median of {args.restore_repeat})" if args.restore_repeat > 1 else ""
    row(f"restore newest, repository{repeat}", restore_repo.wall, "", restore_repo)
    row(f"restore newest, stream{repeat}", restore_stream.wall, "", restore_stream)
    row(f"gc, {args.generations} generations, nothing to free", gc_all.wall, "", gc_all)
    row(f"prune to {keep} and gc", gc_half.wall, f"-{mib(freed)}", gc_half)
    print()
    print(
        f"- second backup / first: time {steps[1].measured.wall / steps[0].measured.wall:.2f}x, "
        f"added {100 * steps[1].added / max(1, first_repo):.2f} % of the first"
    )
    print(
        f"- repository after {args.generations} generations: {mib(repo_total)} = "
        f"{repo_total / max(1, first_repo):.2f}x one full backup; stream layout: "
        f"{mib(int(stream_total))} = {stream_total / max(1, first_stream):.1f}x"
    )
    print(f"- restore newest, repository / stream: {restore_repo.wall / restore_stream.wall:.2f}x")
    shutil.rmtree(runs)


def change(image: Path, size: int, fraction: float, pattern: str, rng: random.Random) -> None:
    """Overwrite `fraction` of the image with random bytes, at 64 KiB-aligned places."""
    piece = PIECE if pattern == "random" else RUN
    count = int(size * fraction) // piece
    with open(image, "r+b") as out:
        for _ in range(count):
            offset = rng.randrange(0, size - piece + 1, PIECE)
            out.seek(offset)
            out.write(rng.randbytes(piece))
        out.flush()
        os.fsync(out.fileno())


def backup_step(what: str, dest: Path, image: Path, layout: str, chunk_size: int = 4 * MiB) -> Step:
    before = tree_bytes(dest)
    time.sleep(1.1)  # stamps are per second
    drop_caches()
    argv = [sys.executable, "-c", BACKUP_CHILD, str(dest), str(image), layout, str(chunk_size)]
    measured = run([argv], cwd=ROOT)
    return Step(what, measured, tree_bytes(dest) - before)


def restore_step(backup: Path, to: Path, image: Path) -> Measured:
    drop_caches()
    measured = cli_step(["restore", str(backup), "--to", str(to)])
    if subprocess.run(["cmp", "-s", str(image), str(to / "vda.raw")], check=False).returncode:
        raise SystemExit(f"{to / 'vda.raw'} differs from {image}")
    shutil.rmtree(to)
    return measured


def cli_step(arguments: list[str], runs: Path | None = None) -> Measured:
    """`virtbackup ARGUMENTS`; with `runs`, under a configuration whose gc grace is 0, so
    that gc removes what the pruned backups alone used (a bench has no other writer)."""
    config = []
    if runs is not None:
        (runs / "bench.toml").write_text("gc_grace = 0\n")
        config = ["--config", str(runs / "bench.toml")]
    return run([[sys.executable, "-m", "virtbackup", "-q", *config, *arguments]], cwd=ROOT)


def median_of(runs: list[Measured]) -> Measured:
    """The run of median wall time (the lower of the middle two)."""
    return sorted(runs, key=lambda measured: measured.wall)[(len(runs) - 1) // 2]


def newest(dest: Path) -> Path:
    return sorted((dest / "bench").iterdir())[-1]


def tree_bytes(path: Path) -> int:
    """Bytes allocated below `path` (what DEST holds on disk)."""
    total = 0
    for directory, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


def bench_big_sparse(work: Path) -> None:
    """A 1 TiB sparse disk with 64 MiB of data: time and peak RSS of a repository backup."""
    runs = work / "repository-1t"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    image = runs / "big.raw"
    with open(image, "wb") as out:
        out.truncate(1 << 40)
        for place in range(8):
            out.seek(place * (128 * GiB))
            out.write(os.urandom(8 * MiB))
    (runs / "repo").mkdir()
    first = backup_step("1 TiB sparse, first", runs / "repo", image, "repository")
    second = backup_step("1 TiB sparse, unchanged", runs / "repo", image, "repository")
    restore = restore_step(newest(runs / "repo"), runs / "restored", image)
    gc = cli_step(["gc", "--dest", str(runs / "repo")], runs)
    print("\n### 1 TiB sparse raw, 64 MiB of data\n")
    print("| step | seconds | added to DEST | peak RSS |")
    print("| --- | ---: | ---: | ---: |")
    row("first backup", first.measured.wall, mib(first.added), first.measured)
    row("unchanged", second.measured.wall, mib(second.added), second.measured)
    row("restore", restore.wall, "", restore)
    row("gc", gc.wall, "", gc)
    shutil.rmtree(runs)


def row(what: str, seconds: float, added: str, measured: Measured) -> None:
    print(f"| {what} | {seconds:.2f} | {added} | {measured.max_rss_kib // 1024} MiB |")


def mib(size: int | float) -> str:
    return f"{size / MiB:.0f} MiB"


if __name__ == "__main__":
    main()
