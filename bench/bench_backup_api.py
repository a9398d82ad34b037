"""Benchmark of the backup-API method against Debian's virtnbdbackup, side by side in one
run on the same running domain (on demand, as root, on a quiet machine; not part of the
test suite).

    /usr/bin/python3 bench/bench_backup_api.py                 # 3 rounds, medians
    /usr/bin/python3 bench/bench_backup_api.py --repeat 1      # a quick look
    /usr/bin/python3 bench/bench_backup_api.py --chunk-size 65536   # a repository of 64 KiB chunks

The 8 GiB reference image (datapath_images.py, ~1.8 GiB allocated) as qcow2 compat 1.1,
private copies of it attached to two running `type='qemu'` domains that boot nothing
(they idle in the BIOS), one per tool: virtnbdbackup refuses to work beside another
tool's checkpoints. Both disks get the same writes, through qemu's block layer with HMP
qemu-io, so the dirty bitmaps see every write. Each round, page cache dropped before
every step:
- full backup: `virtbackup backup --method backup-api` into a repository against
  `virtnbdbackup -l full -z` (time, bytes stored);
- `--change` of the disk rewritten in 64 KiB pieces at random 64 KiB-aligned places,
  with pieces of the reference's own data (so they compress as real data does);
- incremental: virtbackup's second backup against `virtnbdbackup -l inc -z` (time,
  bytes stored), beside the lz4 size of the data written;
- restore of that generation: `virtbackup restore` against `virtnbdrestore` of the
  chain (time; the two images are compared);
- an unchanged running domain: virtbackup's whole third backup.
Which tool goes first alternates between rounds. Prints markdown tables.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import libvirt_qemu
import lz4.frame
from bench_repository import tree_bytes
from datapath_images import MiB, data_extents, reference_qcow2, reference_raw
from datapath_measure import Measured, drop_caches, run

ROOT = Path(__file__).resolve().parent.parent
PIECE = 64 << 10
OURS, THEIRS = "vb-bench-apibench", "vb-bench-apibench-virtnbd"  # the two domains
BACKEND = "/machine/peripheral/virtio-disk0/virtio-backend"  # the disk's qdev, for qemu-io

MAKE_REPOSITORY = """
import sys
from pathlib import Path
from virtbackup.core.repository_format import RepositoryConfig
from virtbackup.engine.stores.chunk_store import ChunkStore
ChunkStore(Path(sys.argv[1])).create(RepositoryConfig(chunk_size=int(sys.argv[2])))
"""


@dataclass
class Round:
    seconds: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds of the tool itself
    others: dict[str, float] = field(default_factory=dict)  # % CPU the rest of the machine used
    stored: dict[str, int] = field(default_factory=dict)
    rss_mib: dict[str, int] = field(default_factory=dict)
    changed_lz4: int = 0
    changed: int = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/virtbackup-bench"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--change", type=float, default=0.02)
    parser.add_argument(
        "--chunk-size", type=int, default=4 * MiB, help="of the repository the bench makes"
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    image = reference_qcow2(args.work)
    runs = args.work / "backup-api"
    libvirt.registerErrorHandler(lambda _context, _error: None, None)  # raised, not printed
    conn = libvirt.open("qemu:///system")
    rounds = []
    try:
        for number in range(args.repeat):
            shutil.rmtree(runs, ignore_errors=True)
            runs.mkdir(mode=0o755)
            rounds.append(bench_round(conn, image, runs, args, first=number % 2 == 0))
            print(f"round {number + 1}: {json.dumps(rounds[-1].__dict__)}", flush=True)
    finally:
        for name in (OURS, THEIRS):
            remove_domain(conn, name)
        shutil.rmtree(runs, ignore_errors=True)
    report(rounds, args)


def bench_round(
    conn: libvirt.virConnect, reference: Path, runs: Path, args: argparse.Namespace, first: bool
) -> Round:
    domains = []
    for name in (OURS, THEIRS):
        disk = runs / f"{name}.qcow2"
        subprocess.run(["cp", "--sparse=always", str(reference), str(disk)], check=True)
        domains.append(start_domain(conn, name, disk))
    result = Round()
    ours, theirs = runs / "dest", runs / "virtnbdbackup"
    state = runs / "state"
    ours.mkdir()
    # made here so that the backups use its chunk size (virtbackup's default is 4 MiB)
    run([[sys.executable, "-c", MAKE_REPOSITORY, str(ours), str(args.chunk_size)]], cwd=ROOT)

    def both(step: str, level: str) -> None:
        steps = [
            lambda: timed(result, f"{step} virtbackup", ours, virtbackup_backup(ours, state)),
            lambda: timed(result, f"{step} virtnbdbackup", theirs, virtnbdbackup(theirs, level)),
        ]
        for go in steps if first else reversed(steps):
            go()

    both("full", "full")
    rng = random.Random(f"backup-api-{args.change}-{first}")
    result.changed, result.changed_lz4 = change_disks(domains, runs, args.change, rng)
    both("incremental", "inc")

    restored_ours, restored_theirs = runs / "restored-virtbackup", runs / "restored-virtnbd"
    newest = sorted((ours / OURS).iterdir())[-1]
    argv = virtbackup_cli(state, "restore", str(newest), "--to", str(restored_ours))
    timed(result, "restore virtbackup", None, argv)
    argv = ["virtnbdrestore", "-n", "-i", str(theirs), "-o", str(restored_theirs)]
    timed(result, "restore virtnbdbackup", None, argv)
    # virtnbdrestore names the image after the source file, beside its own metadata
    (theirs_image,) = [p for p in restored_theirs.iterdir() if p.suffix not in (".xml", ".json")]
    same = subprocess.run(
        ["qemu-img", "compare", "-q", str(restored_ours / "vda.raw"), str(theirs_image)],
        check=False,
    )
    if same.returncode:
        raise SystemExit("the two restored images differ")
    shutil.rmtree(restored_ours)
    shutil.rmtree(restored_theirs)

    timed(result, "unchanged virtbackup", ours, virtbackup_backup(ours, state))
    for name in (OURS, THEIRS):
        remove_domain(conn, name)
    return result


def timed(result: Round, what: str, dest: Path | None, argv: list[str]) -> None:
    before = tree_bytes(dest) if dest is not None and dest.exists() else 0
    time.sleep(1.1)  # stamps are per second
    drop_caches()
    measured: Measured = run([argv], cwd=ROOT)
    result.seconds[what] = measured.wall
    result.cpu[what] = measured.cpu
    result.others[what] = measured.other_percent
    result.rss_mib[what] = measured.max_rss_kib // 1024
    if dest is not None:
        result.stored[what] = tree_bytes(dest) - before
    print(
        f"{what}: {measured.wall:.2f} s, CPU {measured.cpu:.1f} s, others "
        f"{measured.other_percent:.0f} %, {result.stored.get(what, 0) / MiB:.0f} MiB",
        flush=True,
    )


def virtbackup_cli(state: Path, *arguments: str) -> list[str]:
    return [
        "env",
        f"VIRTBACKUP_STATE_DIR={state}",
        sys.executable,
        "-m",
        "virtbackup",
        "--config",
        "/dev/null",
        "-q",
        *arguments,
    ]


def virtbackup_backup(dest: Path, state: Path) -> list[str]:
    return virtbackup_cli(
        state,
        "backup",
        OURS,
        "--dest",
        str(dest),
        "--method",
        "backup-api",
        "--layout",
        "repository",
    )


def virtnbdbackup(output: Path, level: str) -> list[str]:
    return ["virtnbdbackup", "-d", THEIRS, "-l", level, "-z", "-n", "-o", str(output)]


def change_disks(
    domains: list[libvirt.virDomain], runs: Path, fraction: float, rng: random.Random
) -> tuple[int, int]:
    """Rewrite `fraction` of each domain's disk, the same way: in 64 KiB pieces at
    distinct random 64 KiB-aligned places, through qemu; the bytes written to one disk
    and their lz4 size (piece by piece)."""
    size = domains[0].blockInfo("vda")[0]
    count = int(size * fraction) // PIECE
    pieces = data_pieces(runs, rng, count)
    written = compressed = 0
    for offset, piece in zip(rng.sample(range(0, size, PIECE), count), pieces, strict=True):
        command = f'qemu-io -d {BACKEND} "write -s {piece} {offset} {PIECE}"'
        for dom in domains:
            out = libvirt_qemu.qemuMonitorCommand(
                dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
            )
            if "rror" in out:
                raise SystemExit(f"qemu-io: {out}")
        written += PIECE
        compressed += len(lz4.frame.compress(piece.read_bytes()))
    return written, compressed


def data_pieces(runs: Path, rng: random.Random, count: int) -> list[Path]:
    """`count` files of 64 KiB taken from the reference's data extents, readable by
    qemu, each from a place off the 64 KiB grid: no piece is a chunk the repository
    already holds (a piece from a grid place would deduplicate with 64 KiB chunks)."""
    source = reference_raw(runs.parent)
    extents = [(start, length) for start, length in data_extents(source) if length >= PIECE]
    folder = runs / "pieces"
    folder.mkdir()
    pieces = []
    with open(source, "rb") as image:
        for number in range(count):
            start, length = rng.choice(extents)
            place = start + rng.randrange(0, length - PIECE + 1, 4096)
            image.seek(place if place % PIECE else place + 4096)
            path = folder / f"{number}.bin"
            path.write_bytes(image.read(PIECE))
            path.chmod(0o644)
            pieces.append(path)
    return pieces


def start_domain(conn: libvirt.virConnect, name: str, disk: Path) -> libvirt.virDomain:
    remove_domain(conn, name)
    xml = f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
  </devices>
</domain>"""
    dom = conn.defineXML(xml)
    dom.create()
    return dom


def remove_domain(conn: libvirt.virConnect, name: str) -> None:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        try:
            dom.abortJob()
        except libvirt.libvirtError:
            pass
        dom.destroy()
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)


def report(rounds: list[Round], args: argparse.Namespace) -> None:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    def seconds(what: str) -> float:
        return median([r.seconds[what] for r in rounds])

    def cpu(what: str) -> float:
        return median([r.cpu[what] for r in rounds])

    def stored(what: str) -> float:
        return median([r.stored[what] for r in rounds])

    def spread(what: str) -> str:
        values = [r.seconds[what] for r in rounds]
        return f"{min(values):.1f}-{max(values):.1f}"

    changed_lz4 = median([r.changed_lz4 for r in rounds])
    print(
        f"\nMedians of {len(rounds)} rounds; {os.cpu_count()} CPUs; virtbackup's chunks "
        f"{args.chunk_size >> 10} KiB; "
        f"{args.change:.0%} changed = {rounds[0].changed / MiB:.0f} MiB in 64 KiB pieces, "
        f"{changed_lz4 / MiB:.0f} MiB as lz4\n"
    )
    print(
        "| step | virtbackup s (range) | virtnbdbackup s (range) | time ratio "
        "| CPU s, virtbackup / virtnbdbackup "
        "| virtbackup stored MiB | virtnbdbackup stored MiB | stored ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for step in ("full", "incremental", "restore"):
        ours, theirs = f"{step} virtbackup", f"{step} virtnbdbackup"
        if step == "restore":
            sizes = "| | | |"
        else:
            sizes = (
                f"| {stored(ours) / MiB:.0f} | {stored(theirs) / MiB:.0f} "
                f"| {stored(ours) / stored(theirs):.2f}x |"
            )
        print(
            f"| {step} | {seconds(ours):.2f} ({spread(ours)}) | {seconds(theirs):.2f} "
            f"({spread(theirs)}) | {seconds(ours) / seconds(theirs):.2f}x "
            f"| {cpu(ours):.1f} / {cpu(theirs):.1f} {sizes}"
        )
    unchanged = "unchanged virtbackup"
    print(
        f"| unchanged running domain | {seconds(unchanged):.2f} ({spread(unchanged)}) | | "
        f"| {cpu(unchanged):.1f} | {stored(unchanged) / MiB:.1f} | | |"
    )
    inc = stored("incremental virtbackup")
    print(
        f"\n- incremental stored / lz4 of the changed data: virtbackup {inc / changed_lz4:.2f}x, "
        f"virtnbdbackup {stored('incremental virtnbdbackup') / changed_lz4:.2f}x"
    )
    others = median([value for r in rounds for value in r.others.values()])
    print(f"- the rest of the machine used {others:.0f} % CPU (of 200 %) during the steps, median")
    rss = {what: max(r.rss_mib[what] for r in rounds) for what in rounds[0].rss_mib}
    print(f"- peak RSS MiB, worst round: {json.dumps(rss)}")


if __name__ == "__main__":
    main()
